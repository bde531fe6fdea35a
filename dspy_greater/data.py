"""BIG-Bench Hard data as DSPy examples, seeded splits, and BBH's answer matching as a metric.

A BBH task is a JSON file ``{"examples": [{"input": ..., "target": ...}]}``. A few tasks ship
inside the package (see `shipped_bbh_tasks`); any other file is loaded from its path.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import dspy

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
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}. "
            "Fix the file there (a trailing comma is a common cause)."
        ) from exc
    try:
        rows = data["examples"]
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
    `ForcedExtractionAdapter` can constrain decoding to them (the setting that lifts SmolLM2's
    accuracy from near 0 to chance; see docs/guides/small-models.md); otherwise ``str``."""
    labels = closed_labels(examples, max_labels)
    answer_type: Any = Literal[labels] if labels else str
    signature = dspy.Signature(
        {INPUT_FIELD: (str, dspy.InputField()), ANSWER_FIELD: (answer_type, dspy.OutputField())},
        instructions,
    )
    return dspy.ChainOfThought(signature)
