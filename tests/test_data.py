"""BBH loading, splits and answer matching."""

from __future__ import annotations

import json
import math
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


def test_majority_rate_and_standard_error():
    examples = [dspy.Example(question=str(i), answer=a) for i, a in enumerate("Yes yes No".split())]
    assert data.majority_class_rate(examples) == pytest.approx(2 / 3)
    assert data.standard_error(0.5, 100) == pytest.approx(0.05)
    assert data.standard_error(1.0, 10) == 0.0
    with pytest.raises(ValueError):
        data.majority_class_rate([])


def test_paired_change_counts_questions_and_their_spread():
    before = [1, 0, 0, 1, 1, 0, 0, 0, 1, 0]
    after = [1, 1, 1, 0, 1, 0, 1, 0, 1, 0]  # three turned right, one wrong
    change = data.paired_change(before, after)
    assert (change.gained, change.lost, change.n) == (3, 1, 10)
    assert change.difference == pytest.approx(0.2)
    # the 0/1 form: sqrt(gained + lost - (gained - lost)^2 / n) / n
    assert change.standard_error == pytest.approx(math.sqrt(3 + 1 - 2**2 / 10) / 10)
    assert str(change) == "3 turned right, 1 wrong (+0.20 ± 0.19)"
    # scores between 0 and 1: the population spread of the changes over sqrt(n)
    partial = data.paired_change([0.5, 0.2, 1.0], [0.7, 0.2, 0.4])
    assert (partial.gained, partial.lost) == (1, 1)
    # changes 0.2, 0, -0.6: mean -2/15, squared deviations summing to 0.52/1.5
    assert partial.difference == pytest.approx(-2 / 15)
    assert partial.standard_error == pytest.approx(math.sqrt(0.52 / 1.5 / 3 / 3))
    assert data.paired_change([1, 0], [1, 0]).standard_error == 0.0
    with pytest.raises(ValueError, match="same questions"):
        data.paired_change([1, 0], [1])


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


def test_a_failed_example_counts_as_wrong_and_is_counted_aloud(vllm_reasoner, caplog):
    """A question too long for the engine's context fails (ContextTooLong): the others are still
    scored, it counts as wrong, and a warning says how many failed. The metric counts every
    answer right, so that the score tells answered from failed whatever the model answers."""
    from dspy_greater.forced_extraction import ForcedExtractionAdapter
    from dspy_greater.lm import local_lm
    from dspy_greater.loaders import load_task

    task = load_task("sports_understanding", dev=2)
    answerable = list(task.splits.dev)
    too_long = answerable[0].copy(question="Is this plausible? " * 1500)
    lm = local_lm(reasoner=vllm_reasoner, max_tokens=16, cache=False)
    program = task.program()

    def answered(example, prediction, trace=None):
        return True

    with dspy.context(lm=lm, adapter=ForcedExtractionAdapter()):
        with caplog.at_level("WARNING", logger="dspy_greater.data"):
            score = data.accuracy(program, [*answerable, too_long], answered, num_threads=1)
    assert "1 of 3 examples failed and count as wrong" in caplog.text
    assert score == pytest.approx(2 / 3)


def test_an_evaluation_where_every_call_failed_is_an_error_not_zero():
    """A stopped server (or a dead engine) fails every call: that is no accuracy of 0, and the
    error names the first failure and what to check."""
    from dspy_greater.adapters.vllm_server import free_port
    from dspy_greater.loaders import load_task

    task = load_task("sports_understanding", dev=3)
    nowhere = dspy.LM(
        "hosted_vllm/gone",
        api_base=f"http://127.0.0.1:{free_port()}/v1",
        api_key="none",
        cache=False,
        num_retries=0,
    )
    with dspy.context(lm=nowhere), pytest.raises(dspy_greater.EvaluationFailed) as failed:
        data.accuracy(task.program(), task.splits.dev, task.metric, num_threads=3)
    assert "All 3 examples failed" in str(failed.value)
    assert "Connection" in str(failed.value) and "server is up" in str(failed.value)
