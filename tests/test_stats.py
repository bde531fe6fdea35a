"""Measuring programs: per-question scores, standard errors, paired changes, the majority rate."""

from __future__ import annotations

import math

import dspy
import pytest

import dspy_greater
from dspy_greater import stats


def test_majority_rate_and_standard_error():
    examples = [dspy.Example(question=str(i), answer=a) for i, a in enumerate("Yes yes No".split())]
    assert stats.majority_class_rate(examples) == pytest.approx(2 / 3)
    assert stats.standard_error(0.5, 100) == pytest.approx(0.05)
    assert stats.standard_error(1.0, 10) == 0.0
    with pytest.raises(ValueError):
        stats.majority_class_rate([])


def test_paired_change_counts_questions_and_their_spread():
    before = [1, 0, 0, 1, 1, 0, 0, 0, 1, 0]
    after = [1, 1, 1, 0, 1, 0, 1, 0, 1, 0]  # three turned right, one wrong
    change = stats.paired_change(before, after)
    assert (change.gained, change.lost, change.n) == (3, 1, 10)
    assert change.difference == pytest.approx(0.2)
    # the 0/1 form: sqrt(gained + lost - (gained - lost)^2 / n) / n
    assert change.standard_error == pytest.approx(math.sqrt(3 + 1 - 2**2 / 10) / 10)
    assert str(change) == "3 turned right, 1 wrong (+0.20 ± 0.19)"
    # scores between 0 and 1: the population spread of the changes over sqrt(n)
    partial = stats.paired_change([0.5, 0.2, 1.0], [0.7, 0.2, 0.4])
    assert (partial.gained, partial.lost) == (1, 1)
    # changes 0.2, 0, -0.6: mean -2/15, squared deviations summing to 0.52/1.5
    assert partial.difference == pytest.approx(-2 / 15)
    assert partial.standard_error == pytest.approx(math.sqrt(0.52 / 1.5 / 3 / 3))
    assert stats.paired_change([1, 0], [1, 0]).standard_error == 0.0
    with pytest.raises(ValueError, match="same questions"):
        stats.paired_change([1, 0], [1])


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
            score = stats.accuracy(program, [*answerable, too_long], answered, num_threads=1)
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
        stats.accuracy(task.program(), task.splits.dev, task.metric, num_threads=3)
    assert "All 3 examples failed" in str(failed.value)
    assert "Connection" in str(failed.value) and "server is up" in str(failed.value)
