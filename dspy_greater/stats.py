"""Measuring a program as the results here are reported: per-question scores, accuracy with its
standard error, the paired change between two programs, and the majority-class rate beside them."""

from __future__ import annotations

import logging
import math
import statistics
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dspy

from .data import ANSWER_FIELD, bbh_metric
from .errors import EvaluationFailed

logger = logging.getLogger(__name__)


def majority_class_rate(examples: Sequence[dspy.Example]) -> float:
    """Share of the most common gold answer: the accuracy of always giving that answer."""
    if not examples:
        raise ValueError("majority_class_rate needs at least one example.")
    counts = Counter(str(ex[ANSWER_FIELD]).strip().lower() for ex in examples)
    return counts.most_common(1)[0][1] / len(examples)


def accuracy(
    program: dspy.Module,
    examples: Sequence[dspy.Example],
    metric: Callable[..., Any] = bbh_metric,
    *,
    num_threads: int = 32,
    progress: bool = False,
) -> float:
    """The program's accuracy on ``examples`` (``dspy.Evaluate``): the mean of `scores`."""
    each = scores(program, examples, metric, num_threads=num_threads, progress=progress)
    return sum(each) / len(each)  # Evaluate's own score is rounded


def scores(
    program: dspy.Module,
    examples: Sequence[dspy.Example],
    metric: Callable[..., Any] = bbh_metric,
    *,
    num_threads: int = 32,
    progress: bool = False,
) -> list[float]:
    """The metric's score of the program on each of ``examples``, in their order, so that two
    programs compare question by question (``dspy.Evaluate``). An example whose call raises
    counts as wrong (0) and never stops the evaluation; a warning says how many did. If every
    one raises (a stopped server, an engine that died) there is nothing measured, and
    `EvaluationFailed` says so instead of reporting 0."""
    if not examples:
        raise ValueError("scores needs at least one example.")
    answered: list[Any] = []  # the predictions the program returned (list.append is atomic)
    errors: list[Exception] = []

    def run(**inputs: Any) -> Any:
        try:
            prediction = program(**inputs)
        except Exception as exc:
            errors.append(exc)
            raise
        answered.append(prediction)
        return prediction  # not answered[-1]: another thread may have appended since

    result = dspy.Evaluate(
        devset=list(examples),
        metric=metric,
        num_threads=num_threads,
        display_progress=progress,
        max_errors=sys.maxsize,  # never stop: a failed example counts as wrong
    )(run)
    # An example failed when its prediction is not one the program returned: its call or the
    # metric raised (Evaluate may rerun a straggler, so the errors are not one per example).
    returned = {id(prediction) for prediction in answered}
    failed = sum(id(prediction) not in returned for _, prediction, _ in result.results)
    if failed == len(examples):
        first = f"; the first with {type(errors[0]).__name__}: {errors[0]}" if errors else ""
        raise EvaluationFailed(
            f"All {len(examples)} examples failed, so there is no accuracy to report{first}. "
            "Check that the model answers (its server is up, its engine started) and evaluate "
            "again."
        )
    if failed:
        logger.warning(
            "%d of %d examples failed and count as wrong (their errors are logged above).",
            failed,
            len(examples),
        )
    return [float(score) for _, _, score in result.results]


def standard_error(accuracy: float, n: int) -> float:
    """Binomial standard error of an accuracy measured on ``n`` examples."""
    if n < 1:
        raise ValueError("standard_error needs n >= 1.")
    return math.sqrt(max(accuracy * (1 - accuracy), 0.0) / n)  # 0 outside [0, 1]


@dataclass(frozen=True)
class PairedChange:
    """How a second program's per-question scores differ from a first's on the same questions.

    ``difference`` is the mean change in score; its ``standard_error`` is the paired one (the
    spread of the per-question changes), smaller than the two accuracies' own SEs suggest
    because both programs answered the same questions.
    """

    gained: int
    lost: int
    n: int
    difference: float
    standard_error: float

    def __str__(self) -> str:
        return (
            f"{self.gained} turned right, {self.lost} wrong "
            f"({self.difference:+.2f} ± {self.standard_error:.2f})"
        )


def clears(change: PairedChange, min_evidence: float) -> bool:
    """Whether ``change`` is evidence enough to replace a start: a gain of at least
    ``min_evidence`` standard errors (GReaTer's ``min_evidence``; 0: any gain)."""
    return change.difference > 0 and change.difference >= min_evidence * change.standard_error


def paired_change(before: Sequence[float], after: Sequence[float]) -> PairedChange:
    """Compare two programs' scores (as `scores` returns them) question by question."""
    if len(before) != len(after) or not before:
        raise ValueError(
            f"paired_change needs two equally long, non-empty score lists; got {len(before)} "
            f"and {len(after)}. Score both programs on the same questions."
        )
    changes = [b - a for a, b in zip(before, after, strict=True)]
    return PairedChange(
        gained=sum(c > 0 for c in changes),
        lost=sum(c < 0 for c in changes),
        n=len(changes),
        difference=statistics.fmean(changes),
        standard_error=statistics.pstdev(changes) / math.sqrt(len(changes)),
    )
