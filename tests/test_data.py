"""BBH loading, splits and answer matching."""

from __future__ import annotations

import json
import typing

import dspy
import pytest

import dspy_greater
from dspy_greater import data


def test_shipped_tasks_load_without_shared_data():
    names = data.shipped_bbh_tasks()
    assert "sports_understanding" in names and len(names) >= 3
    for name in names:
        examples = data.load_bbh(name)
        assert len(examples) > 100
        assert set(examples[0].inputs().keys()) == {"question"}
        assert set(examples[0].labels().keys()) == {"answer"}


def test_load_from_any_path_matches_the_shipped_copy(shared_bbh):
    from_path = data.load_bbh(shared_bbh / "sports_understanding.json")
    shipped = data.load_bbh("sports_understanding")
    assert [(e.question, e.answer) for e in from_path] == [(e.question, e.answer) for e in shipped]
    causal = data.load_bbh(shared_bbh / "causal_judgement.json")
    assert len(causal) == 187


def test_bad_task_inputs_have_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="sports_understanding"):
        data.load_bbh("no_such_task")
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="not a BBH task file"):
        data.load_bbh(wrong)
    comma = tmp_path / "comma.json"
    comma.write_text('{"examples": [\n  {"input": "q", "target": "a"},\n]}')
    with pytest.raises(ValueError, match="not valid JSON: .* at line 3, column 1"):
        data.load_bbh(comma)
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"examples": []}))
    with pytest.raises(ValueError, match="no examples"):
        data.load_bbh(empty)


def test_split_is_seeded_disjoint_and_complete():
    examples = data.load_bbh("boolean_expressions")
    a = data.split(examples, train=50, dev=100, seed=3)
    b = data.split(examples, train=50, dev=100, seed=3)
    c = data.split(examples, train=50, dev=100, seed=4)
    key = lambda ex: ex.question  # noqa: E731
    assert [key(e) for e in a.train] == [key(e) for e in b.train]
    assert [key(e) for e in a.train] != [key(e) for e in c.train]
    assert (len(a.train), len(a.dev), len(a.test)) == (50, 100, len(examples) - 150)
    seen = [key(e) for e in a.train + a.dev + a.test]
    assert sorted(seen) == sorted(key(e) for e in examples)
    with pytest.raises(ValueError, match="ask for fewer"):
        data.split(examples, train=200, dev=100)


@pytest.mark.parametrize(
    ("prediction", "target", "expected"),
    [
        ("(A)", "(A)", True),
        ("A", "(A)", True),
        ("A.", "(A)", True),
        ("The answer is (C) blue.", "(C)", True),
        ("(B)", "(A)", False),
        ("All of them", "(A)", False),
        ("Yes.", "Yes", True),
        ("yes", "Yes", True),
        ('"Yes, the sentence is plausible."', "yes", True),
        ("No, it is not", "Yes", False),
        ("valid", "invalid", False),
        ("Invalid.", "invalid", True),
        ("False", "True", False),
        ("True", "True", True),
        ("24", "24", True),
        ("The result is 24.", "24", True),
        ("-24", "24", False),
        ("1,024", "1024", True),
        ("24.0", "24", True),
        ("", "24", False),
        ("] ]", "] ]", True),
        ("syndrome therefrom", "syndrome therefrom", True),
        ("therefrom syndrome", "syndrome therefrom", False),
    ],
)
def test_bbh_answer_matching(prediction, target, expected):
    assert data.bbh_answer_matches(prediction, target) is expected


def test_metric_reads_the_answer_field():
    example = dspy.Example(question="q", answer="(B)").with_inputs("question")
    assert data.bbh_metric(example, dspy.Prediction(answer="B"))
    assert not data.bbh_metric(example, dspy.Prediction(answer="(A)"))
    assert not data.bbh_metric(example, dspy.Prediction(reasoning="no answer field"))


def test_bbh_program_types_a_closed_answer_set_only():
    closed = dspy_greater.bbh_program(dspy_greater.load_bbh("sports_understanding"), "Be brief.")
    signature = closed.predict.signature
    assert signature.instructions == "Be brief."
    assert list(signature.output_fields) == ["reasoning", "answer"]
    assert typing.get_args(signature.output_fields["answer"].annotation) == ("no", "yes")
    open_ended = [dspy.Example(question=f"{n} + 1?", answer=str(n + 1)) for n in range(30)]
    assert (
        dspy_greater.bbh_program(open_ended).predict.signature.output_fields["answer"].annotation
        is str
    )
