"""Benchmark tasks as DSPy examples: BBH, GSM8K and FOLIO, each with its metric and the paper's
splits.

`load_task` is what the command line and the benchmarks call: it takes a shipped BBH task
name, a BBH JSON file, a GSM8K or FOLIO folder, or a Hugging Face hub name, and returns a
`Task` (seeded train/dev/test splits, the metric, and a starting ``ChainOfThought``).
GSM8K and FOLIO are read with ``datasets`` (``load_dataset("json", data_files=...)`` for a local
folder, the hub otherwise).

Splits follow the GReaTer paper where the data allows:

- BBH: 50 train, 100 dev, the rest test. A task with fewer than 250 examples would leave fewer
  than 100 test questions, so it gets 20 % train, 40 % dev and the rest test instead
  (``causal_judgement``, 187: 37 / 74 / 76; ``penguins_in_a_table``, 146: 29 / 58 / 59).
- GSM8K: 100 train and 100 dev drawn (seeded) from the training file; test is the test file
  (1,319 problems).
- FOLIO: 100 train and 100 dev drawn (seeded) from the training file; test is the validation file
  (204 stories; FOLIO's test labels are not public). FOLIO's training file labels an undecided
  conclusion ``Unknown`` and its validation file ``Uncertain``: both load as ``Uncertain``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import dspy

from .data import (
    _NUMBER,
    ANSWER_FIELD,
    Splits,
    bbh_metric,
    closed_labels,
    load_bbh,
    shipped_bbh_tasks,
    split,
)

GSM8K_HUB = "openai/gsm8k"
FOLIO_HUB = "yale-nlp/FOLIO"
FOLIO_LABELS = ("False", "True", "Uncertain")
_FOLIO_SYNONYMS = {
    "unknown": "Uncertain",
    "uncertain": "Uncertain",
    "true": "True",
    "false": "False",
}

Metric = Callable[..., Any]


# -- reading files and the hub -----------------------------------------------------------------
def _first_row(path: Path) -> dict[str, Any]:
    with path.open() as handle:
        line = handle.readline()
    try:
        row = json.loads(line)
    except ValueError as exc:
        raise ValueError(f"{path} is not JSON Lines (one JSON object per line).") from exc
    if not isinstance(row, dict):
        raise ValueError(f"{path}: each line must be a JSON object, got {type(row).__name__}.")
    return row


def _read_splits(
    source: str | Path, files: dict[str, str], hub_config: str | None
) -> dict[str, list[dict[str, Any]]]:
    """Rows of each split, from a local folder holding ``files`` or from the hub."""
    from datasets import load_dataset  # heavy import: only when a dataset is loaded

    folder = Path(source)
    if folder.is_dir():
        data_files = {name: str(folder / file) for name, file in files.items()}
        missing = [f for f in data_files.values() if not Path(f).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{folder} lacks {', '.join(missing)}; expected the files "
                f"{', '.join(files.values())}."
            )
        # One call per file: FOLIO's two files do not share their columns.
        return {
            name: list(load_dataset("json", data_files=file, split="train"))
            for name, file in data_files.items()
        }
    loaded = load_dataset(str(source), hub_config)
    return {name: list(loaded[name]) for name in files}


# -- GSM8K -----------------------------------------------------------------------------------
def gsm8k_answer(solution: str) -> str:
    """The final number of a GSM8K solution (the text after ``####``), without thousands commas."""
    if "####" not in solution:
        raise ValueError(
            f"Not a GSM8K solution (no '####' before the final answer): {solution[-80:]!r}"
        )
    return solution.rsplit("####", 1)[1].strip().replace(",", "")


def load_gsm8k(source: str | Path = GSM8K_HUB) -> dict[str, list[dspy.Example]]:
    """GSM8K's ``train`` and ``test`` splits as ``dspy.Example(question, answer)`` with
    ``question`` as input and the final number as ``answer`` (the worked solution is kept as
    ``solution``). ``source`` is a folder holding ``train.jsonl`` and ``test.jsonl`` (the
    ``openai/grade-school-math`` layout) or a hub name (``openai/gsm8k``, config ``main``)."""
    rows = _read_splits(source, {"train": "train.jsonl", "test": "test.jsonl"}, "main")
    return {
        name: [
            dspy.Example(
                question=row["question"], answer=gsm8k_answer(row["answer"]), solution=row["answer"]
            ).with_inputs("question")
            for row in split_rows
        ]
        for name, split_rows in rows.items()
    }


def numbers_match(prediction: str, target: str) -> bool:
    """Does the *last* number in ``prediction`` equal ``target``? Thousands commas, a ``$`` and a
    trailing ``.0`` do not matter (``"$1,000.00"`` matches ``"1000"``)."""
    found = _NUMBER.findall(str(prediction))
    if not found:
        return False
    try:
        return abs(float(found[-1].replace(",", "")) - float(str(target).replace(",", ""))) < 1e-6
    except ValueError:
        return False


def gsm8k_metric(example: dspy.Example, prediction: Any, trace: Any = None) -> bool:
    """DSPy metric: does the last number of ``prediction.answer`` equal the example's answer?"""
    answer = getattr(prediction, ANSWER_FIELD, None)
    return answer is not None and numbers_match(str(answer), str(example[ANSWER_FIELD]))


# -- FOLIO -----------------------------------------------------------------------------------
def folio_label(label: str) -> str:
    """FOLIO's label in one spelling: ``True``, ``False`` or ``Uncertain`` (``Unknown`` in the
    training file means ``Uncertain``)."""
    try:
        return _FOLIO_SYNONYMS[str(label).strip().rstrip(".").lower()]
    except KeyError:
        raise ValueError(
            f"Not a FOLIO label: {label!r} (expected True, False, Uncertain or Unknown)."
        ) from None


def load_folio(source: str | Path = FOLIO_HUB) -> dict[str, list[dspy.Example]]:
    """FOLIO's ``train`` and ``validation`` splits as ``dspy.Example(premises, conclusion,
    answer)`` with ``premises`` (one per line) and ``conclusion`` as inputs and the label
    (``True``/``False``/``Uncertain``) as ``answer``. ``source`` is a folder holding
    ``train.jsonl`` and ``validation.jsonl`` (the ``Yale-LILY/FOLIO`` layout) or a hub name
    (``yale-nlp/FOLIO``, gated: accept its terms on the hub first)."""
    rows = _read_splits(source, {"train": "train.jsonl", "validation": "validation.jsonl"}, None)

    def example(row: dict[str, Any]) -> dspy.Example:
        premises = row["premises"]
        text = "\n".join(premises) if isinstance(premises, list) else str(premises)
        return dspy.Example(
            premises=text, conclusion=row["conclusion"], answer=folio_label(row["label"])
        ).with_inputs("premises", "conclusion")

    return {name: [example(row) for row in split_rows] for name, split_rows in rows.items()}


def folio_metric(example: dspy.Example, prediction: Any, trace: Any = None) -> bool:
    """DSPy metric: is ``prediction.answer`` the example's label (``Unknown`` = ``Uncertain``)?"""
    answer = getattr(prediction, ANSWER_FIELD, None)
    if answer is None:
        return False
    words = str(answer).strip().split()
    try:
        return bool(words) and folio_label(words[0].rstrip(",;:!")) == example[ANSWER_FIELD]
    except ValueError:
        return False


# -- one bundle for the CLI and the benchmarks --------------------------------------------------
@dataclass(frozen=True)
class Task:
    """A benchmark task: seeded splits, its metric, and how its starting program looks."""

    name: str
    splits: Splits
    metric: Metric
    inputs: tuple[str, ...]
    labels: tuple[str, ...] | None  # a closed answer set, typed as ``Literal`` in the program
    protocol: str  # how the splits were made, in words

    def program(self, instructions: str = "Answer the question.") -> dspy.ChainOfThought:
        """A ``ChainOfThought`` from the task's inputs to ``answer`` (typed by the labels when
        the answers form a closed set, so forced extraction can constrain them)."""
        answer: Any = Literal[self.labels] if self.labels else str
        fields = {name: (str, dspy.InputField()) for name in self.inputs}
        fields[ANSWER_FIELD] = (answer, dspy.OutputField())
        return dspy.ChainOfThought(dspy.Signature(fields, instructions))


def _bbh_sizes(n: int) -> tuple[int, int]:
    return (50, 100) if n >= 250 else (n // 5, 2 * n // 5)


def _kind(data: str) -> str:
    """``bbh``, ``gsm8k`` or ``folio`` for a path or name; a clear error otherwise."""
    path = Path(data)
    if path.is_file():
        return "bbh"
    if path.is_dir():
        probe = path / "train.jsonl"
        if not probe.is_file():
            raise ValueError(
                f"{path} is a folder without train.jsonl. Expected a GSM8K folder (train.jsonl, "
                "test.jsonl with 'question' and 'answer') or a FOLIO folder (train.jsonl, "
                "validation.jsonl with 'premises', 'conclusion', 'label'), or a BBH JSON file."
            )
        keys = set(_first_row(probe))
        if {"question", "answer"} <= keys:
            return "gsm8k"
        if {"premises", "conclusion", "label"} <= keys:
            return "folio"
        raise ValueError(
            f"{probe} has the keys {sorted(keys)}; expected GSM8K's 'question' and "
            "'answer' or FOLIO's 'premises', 'conclusion' and 'label'."
        )
    lowered = data.lower()
    if lowered in ("gsm8k", GSM8K_HUB):
        return "gsm8k"
    if lowered in ("folio", FOLIO_HUB.lower()):
        return "folio"
    if data in shipped_bbh_tasks():
        return "bbh"
    raise FileNotFoundError(
        f"No data at {data!r}: not a file or folder, not a shipped BBH task "
        f"({', '.join(shipped_bbh_tasks())}), and not a hub name (gsm8k, folio). Give the path "
        'of a BBH JSON file ({"examples": [{"input", "target"}]}), of a GSM8K or FOLIO '
        "folder, or one of those names."
    )


def load_task(
    data: str | Path,
    *,
    train: int | None = None,
    dev: int | None = None,
    test: int | None = None,
    seed: int = 0,
) -> Task:
    """The task at ``data`` (path or name, see the module docstring) with seeded splits.

    ``train`` and ``dev`` no larger than the protocol's take the first examples of its splits,
    so the test split stays the protocol's whatever budget a run uses; larger ones (BBH: or a
    ``test`` larger than the protocol's) cut the shuffled pool again (BBH: the test split is
    then what is left, e.g. 24 / 76 / 150 of 250). ``test`` keeps the first ``test`` test
    examples.
    """
    data = str(data)
    kind = _kind(data)
    inputs: tuple[str, ...]
    if kind == "bbh":
        examples = load_bbh(data)
        name, metric, inputs = (
            "bbh/" + Path(data).name.removesuffix(".json"),
            bbh_metric,
            ("question",),
        )
        full_train, full_dev = _bbh_sizes(len(examples))
        train, dev = train or full_train, full_dev if dev is None else dev
        full_test = len(examples) - full_train - full_dev
        if train <= full_train and dev <= full_dev and (test is None or test <= full_test):
            splits = split(examples, train=full_train, dev=full_dev, seed=seed)
            splits = Splits(splits.train[:train], splits.dev[:dev], splits.test)
        else:
            splits = split(examples, train=train, dev=dev, seed=seed)
        rule = "" if len(examples) >= 250 else " (under 250 examples: 20 % / 40 % / the rest)"
        protocol = (
            f"BBH: shuffled with seed {seed}; {full_train} train / {full_dev} dev / the "
            f"rest test{rule}"
        )
    else:
        loaded = load_gsm8k(data) if kind == "gsm8k" else load_folio(data)
        pool_name, test_name = ("train", "test") if kind == "gsm8k" else ("train", "validation")
        train, dev = train or 100, 100 if dev is None else dev
        cut = (max(train, 100), max(dev, 100))
        try:
            drawn = split(loaded[pool_name], train=cut[0], dev=cut[1], seed=seed)
        except ValueError as exc:
            raise ValueError(f"{kind}'s {pool_name} split: {exc}") from None
        splits = Splits(drawn.train[:train], drawn.dev[:dev], list(loaded[test_name]))
        name, metric = kind, gsm8k_metric if kind == "gsm8k" else folio_metric
        protocol = (
            f"{kind}: 100 train / 100 dev drawn from its {pool_name} split with seed "
            f"{seed}, test = its {test_name} split"
        )
        inputs = ("question",) if kind == "gsm8k" else ("premises", "conclusion")
    if test is not None:
        splits = Splits(splits.train, splits.dev, splits.test[:test])
    sizes = f"{len(splits.train)} / {len(splits.dev)} / {len(splits.test)}"
    protocol += f"; this run uses {sizes}"
    labels = (
        FOLIO_LABELS
        if kind == "folio"
        else None
        if kind == "gsm8k"
        else closed_labels(splits.train + splits.dev + splits.test)
    )
    return Task(name, splits, metric, inputs, labels, protocol)


__all__ = [
    "Task",
    "folio_label",
    "folio_metric",
    "gsm8k_answer",
    "gsm8k_metric",
    "load_folio",
    "load_gsm8k",
    "load_task",
    "numbers_match",
]
