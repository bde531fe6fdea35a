"""GSM8K, FOLIO and BBH as tasks: every shipped file loads with the paper's splits, the metrics
take the answers models actually write, and bad data is named."""

from __future__ import annotations

import json
import typing

import dspy
import pytest

from dspy_greater import loaders
from dspy_greater.data import bbh_metric


def test_every_bbh_file_loads_with_the_protocol_splits(shared_bbh):
    files = sorted(shared_bbh.glob("*.json"))
    assert len(files) == 21
    for path in files:
        task = loaders.load_task(path)
        n = sum(len(part) for part in (task.splits.train, task.splits.dev, task.splits.test))
        assert n == len(json.loads(path.read_text())["examples"])
        expected = (50, 100) if n >= 250 else (n // 5, 2 * n // 5)
        assert (len(task.splits.train), len(task.splits.dev)) == expected, path.name
        assert len(task.splits.test) >= 59
        assert task.inputs == ("question",) and task.metric is bbh_metric
        assert set(task.splits.train[0].inputs().keys()) == {"question"}
    penguins = loaders.load_task(shared_bbh / "penguins_in_a_table.json")
    assert [len(p) for p in (penguins.splits.train, penguins.splits.dev, penguins.splits.test)] == [
        29,
        58,
        59,
    ]
    assert "uses 29 / 58 / 59" in penguins.protocol
    small = loaders.load_task(shared_bbh / "temporal_sequences.json", train=12, dev=24, seed=1)
    full = loaders.load_task(shared_bbh / "temporal_sequences.json", seed=1)
    assert small.splits.train == full.splits.train[:12] and small.splits.dev == full.splits.dev[:24]
    assert small.splits.test == full.splits.test  # a smaller budget keeps the protocol's test split
    bigger = loaders.load_task(shared_bbh / "temporal_sequences.json", train=80, seed=1)
    assert len(bigger.splits.train) == 80 and len(bigger.splits.test) == 70
    cut = loaders.load_task(shared_bbh / "temporal_sequences.json", dev=24, test=30, seed=1)
    assert cut.protocol.endswith("uses 50 / 24 / 30")  # the sizes after the test cut
    # a test split larger than the protocol's (100 of 250) cuts the pool again: disjoint, seeded
    wide = loaders.load_task(shared_bbh / "temporal_sequences.json", train=24, dev=76, test=150)
    parts = (wide.splits.train, wide.splits.dev, wide.splits.test)
    assert [len(part) for part in parts] == [24, 76, 150]
    questions = [example.question for part in parts for example in part]
    assert len(set(questions)) == 250
    again = loaders.load_task(shared_bbh / "temporal_sequences.json", train=24, dev=76, test=150)
    assert again.splits.test == wide.splits.test


def test_gsm8k_loads_numbers_and_the_test_file(shared_data):
    raw = loaders.load_gsm8k(shared_data / "gsm8k")
    assert (len(raw["train"]), len(raw["test"])) == (7473, 1319)
    task = loaders.load_task(shared_data / "gsm8k", seed=3)
    assert task.name == "gsm8k" and task.labels is None and task.inputs == ("question",)
    assert (len(task.splits.train), len(task.splits.dev), len(task.splits.test)) == (100, 100, 1319)
    for example in raw["train"] + raw["test"]:
        float(example.answer)  # the final number, commas removed
        assert "," not in example.answer
    assert set(task.splits.train[0].inputs().keys()) == {"question"}
    train_questions = {ex.question for ex in raw["train"]}
    assert {ex.question for ex in task.splits.train + task.splits.dev} <= train_questions
    again = loaders.load_task(shared_data / "gsm8k", seed=3)
    other = loaders.load_task(shared_data / "gsm8k", seed=4)
    assert [e.question for e in again.splits.train] == [e.question for e in task.splits.train]
    assert [e.question for e in other.splits.train] != [e.question for e in task.splits.train]
    comma = next(ex for ex in raw["test"] if "2,125" in ex.solution.rsplit("####", 1)[1])
    assert comma.answer == "2125"


def test_folio_maps_unknown_to_uncertain(shared_data):
    raw = loaders.load_folio(shared_data / "folio")
    assert (len(raw["train"]), len(raw["validation"])) == (1004, 204)
    for part in raw.values():
        assert {ex.answer for ex in part} == {"True", "False", "Uncertain"}
    assert sum(ex.answer == "Uncertain" for ex in raw["train"]) == 330  # 'Unknown' in the file
    task = loaders.load_task(shared_data / "folio", train=20, dev=10, test=50)
    assert (len(task.splits.train), len(task.splits.dev), len(task.splits.test)) == (20, 10, 50)
    assert task.splits.train == loaders.load_task(shared_data / "folio").splits.train[:20]
    with pytest.raises(
        ValueError,
        match="folio's train split: Cannot take 2000 train \\+ 100 dev examples from 1004",
    ):
        loaders.load_task(shared_data / "folio", train=2000)
    example = task.splits.train[0]
    assert set(example.inputs().keys()) == {"premises", "conclusion"}
    assert "\n" in example.premises  # one premise per line
    signature = task.program().predict.signature
    assert list(signature.input_fields) == ["premises", "conclusion"]
    assert typing.get_args(signature.output_fields["answer"].annotation) == loaders.FOLIO_LABELS


@pytest.mark.parametrize(
    "said, gold, expected",
    [
        ("1,000", "1000", True),
        ("$1,000.00", "1000", True),
        ("1000", "1,000", True),
        ("16 - 3 - 4 = 9 eggs, so 9 * 2 = 18", "18", True),
        ("18 dollars", "18", True),
        ("-5", "-5", True),
        ("5", "-5", False),
        ("18.5", "18", False),
        ("eighteen", "18", False),
    ],
)
def test_gsm8k_metric_reads_the_last_number(said, gold, expected):
    example = dspy.Example(question="q", answer=gold).with_inputs("question")
    assert loaders.gsm8k_metric(example, dspy.Prediction(answer=said)) is expected


@pytest.mark.parametrize(
    "said, gold, expected",
    [
        ("Uncertain", "Uncertain", True),
        ("Unknown", "Uncertain", True),
        ("true.", "True", True),
        ("False, because", "False", True),
        ("True", "False", False),
        ("maybe", "Uncertain", False),
    ],
)
def test_folio_metric(said, gold, expected):
    example = dspy.Example(premises="p", conclusion="c", answer=gold)
    assert loaders.folio_metric(example, dspy.Prediction(answer=said)) is expected


@pytest.mark.parametrize(
    "said, gold, expected",
    [
        ("(A)", "(A)", True),
        ("A", "(A)", True),
        ("(B)", "(A)", False),
        ("Yes.", "Yes", True),
        ("yes", "Yes", True),
        ("No", "Yes", False),
        ("1,000", "1000", True),
    ],
)
def test_bbh_metric_on_tricky_answers(said, gold, expected):
    example = dspy.Example(question="q", answer=gold)
    assert bbh_metric(example, dspy.Prediction(answer=said)) is expected


def test_bad_data_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a file or folder.*gsm8k, folio"):
        loaders.load_task(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="without train.jsonl"):
        loaders.load_task(tmp_path / "empty")
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "train.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
    with pytest.raises(ValueError, match="keys \\['text'\\]; expected GSM8K"):
        loaders.load_task(odd)
    not_bbh = tmp_path / "rows.json"
    not_bbh.write_text(json.dumps([{"input": "x"}]))
    with pytest.raises(ValueError, match="not a BBH task file"):
        loaders.load_task(not_bbh)
    gsm = tmp_path / "gsm"
    gsm.mkdir()
    (gsm / "train.jsonl").write_text(json.dumps({"question": "q", "answer": "4"}) + "\n")
    (gsm / "test.jsonl").write_text(json.dumps({"question": "q", "answer": "#### 4"}) + "\n")
    with pytest.raises(ValueError, match="no '####'"):
        loaders.load_task(gsm)
    with pytest.raises(ValueError, match="Cannot take"):
        loaders.load_task("sports_understanding", train=300)
