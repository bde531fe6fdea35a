"""BIG-Bench Hard data as DSPy examples, seeded splits, and BBH's answer matching as a metric.

A BBH task is a JSON file ``{"examples": [{"input": ..., "target": ...}]}``. A few tasks ship
inside the package (see :func:`shipped_bbh_tasks`); any other file is loaded from its path.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import statistics
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import dspy

from .errors import EvaluationFailed

logger = logging.getLogger(__name__)

INPUT_FIELD = "question"
ANSWER_FIELD = "answer"


def shipped_bbh_tasks() -> list[str]:
    """Names of the BBH tasks that ship inside the package (MIT licence beside them)."""
    folder = resources.files("dspy_greater") / "tasks" / "bbh"
    return sorted(
        p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json")
    )


def load_bbh(task: str | Path) -> list[dspy.Example]:
    """Load a BBH task as ``dspy.Example(question=..., answer=...).with_inputs("question")``.

    ``task`` is a path to a BBH-format JSON file, or the name of a shipped task
    (e.g. ``"sports_understanding"``).
    """
    path = Path(task)
    if not path.is_file():
        if str(task) not in shipped_bbh_tasks():
            raise FileNotFoundError(
                f"No BBH task file at {str(task)!r}, and it is not a shipped task. Give the path "
                f"of a BBH JSON file, or one of: {', '.join(shipped_bbh_tasks())}."
            )
        path = Path(str(resources.files("dspy_greater") / "tasks" / "bbh" / f"{task}.json"))
    try:
        rows = json.loads(path.read_text())["examples"]
        examples = [
            dspy.Example(**{INPUT_FIELD: row["input"], ANSWER_FIELD: str(row["target"])})
            for row in rows
        ]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"{path} is not a BBH task file: expected "
            '{"examples": [{"input": ..., "target": ...}, ...]}'
        ) from exc
    if not examples:
        raise ValueError(f"{path} holds no examples.")
    return [ex.with_inputs(INPUT_FIELD) for ex in examples]


@dataclass(frozen=True)
class Splits:
    """Disjoint train, dev (validation) and test examples."""

    train: list[dspy.Example]
    dev: list[dspy.Example]
    test: list[dspy.Example]


def split(
    examples: Sequence[dspy.Example], *, train: int = 50, dev: int = 100, seed: int = 0
) -> Splits:
    """Shuffle with ``seed`` and cut into ``train`` and ``dev`` examples; the rest is test.

    The defaults are the GReaTer paper's (50 train, 100 dev, the rest test).
    """
    if train < 1 or dev < 0:
        raise ValueError(f"Split sizes must be train >= 1 and dev >= 0, got {train=}, {dev=}.")
    if train + dev > len(examples):
        raise ValueError(
            f"Cannot take {train} train + {dev} dev examples from {len(examples)}; ask for fewer."
        )
    order = list(examples)
    random.Random(seed).shuffle(order)
    return Splits(order[:train], order[train : train + dev], order[train + dev :])


_CHOICE = re.compile(r"^\(([A-Z])\)$")
_CHOICE_IN_TEXT = re.compile(r"\(([A-Z])\)|^([A-Z])(?:[.):]|$)")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _words(text: str) -> str:
    return " ".join(text.strip().strip("\"'`").rstrip(".").split()).lower()


def _as_number(text: str) -> float | None:
    found = _NUMBER.search(text)
    return float(found.group().replace(",", "")) if found else None


def bbh_answer_matches(prediction: str, target: str) -> bool:
    """BBH answer matching, tolerant of how models phrase a correct answer.

    - choice targets ``(A)``: the prediction's first ``(X)``, or a bare leading letter ``X``;
    - numeric targets: the first number in the prediction, compared as a number (``1,024``);
    - everything else (``Yes``, ``valid``, ``True``, free text): case, surrounding quotes,
      a final period and extra whitespace are ignored; for one-word targets only the
      prediction's first word is compared.
    """
    target, prediction = target.strip(), prediction.strip()
    choice = _CHOICE.match(target)
    if choice:
        found = _CHOICE_IN_TEXT.search(prediction)
        return found is not None and (found.group(1) or found.group(2)) == choice.group(1)
    if _NUMBER.fullmatch(target):
        value = _as_number(prediction)
        return value is not None and math.isclose(value, float(target.replace(",", "")))
    gold = _words(target)
    said = _words(prediction)
    if " " not in gold:
        said = _words(said.split(" ", 1)[0].rstrip(",;:!")) if said else ""
    return said == gold


def bbh_metric(example: dspy.Example, prediction: Any, trace: Any = None) -> bool:
    """DSPy metric: does ``prediction.answer`` match ``example.answer`` under BBH matching?"""
    answer = getattr(prediction, ANSWER_FIELD, None)
    return answer is not None and bbh_answer_matches(str(answer), str(example[ANSWER_FIELD]))


def closed_labels(examples: Sequence[dspy.Example], max_labels: int = 20) -> tuple[str, ...] | None:
    """The examples' distinct answers, sorted, when they form a closed set of at most
    ``max_labels`` labels (a classification task); ``None`` for open answers."""
    labels = tuple(sorted({str(ex[ANSWER_FIELD]).strip() for ex in examples}))
    return labels if 0 < len(labels) <= max_labels else None


def bbh_program(
    examples: Sequence[dspy.Example],
    instructions: str = "Answer the question.",
    max_labels: int = 20,
) -> dspy.ChainOfThought:
    """A ``ChainOfThought`` ``question -> answer`` for a BBH task. Where the task's answers form a
    closed set of at most ``max_labels`` labels the answer is typed ``Literal[labels]``, so
    :class:`~dspy_greater.ForcedExtractionAdapter` can constrain decoding to them (the setting
    that lifts SmolLM2's accuracy from near 0 to chance; see the README); otherwise ``str``."""
    labels = closed_labels(examples, max_labels)
    answer_type: Any = Literal[labels] if labels else str
    signature = dspy.Signature(
        {INPUT_FIELD: (str, dspy.InputField()), ANSWER_FIELD: (answer_type, dspy.OutputField())},
        instructions,
    )
    return dspy.ChainOfThought(signature)


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
    """The program's accuracy on ``examples`` (``dspy.Evaluate``): the mean of :func:`scores`."""
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
    :class:`EvaluationFailed` says so instead of reporting 0."""
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


def paired_change(before: Sequence[float], after: Sequence[float]) -> PairedChange:
    """Compare two programs' scores (as :func:`scores` returns them) question by question."""
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
