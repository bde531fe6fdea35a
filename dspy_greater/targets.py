"""A pipeline stage's targets: what each predictor should have written, from traced runs.

GReaTer's loss needs a gold value for a predictor's answer field. In a pipeline only the last
stage has a label; the others get theirs as DSPy's bootstrapping does: run the program on the
trainset under DSPy's tracing (``bootstrap_trace_data``), keep the runs whose final prediction
passes the metric, and take each predictor's traced inputs and outputs as its examples. The stage
that writes the program's answer falls back to the examples' own labels when too few runs pass.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dspy

from .errors import GreaterError
from .program import metric_value, passes
from .renderers import reasoning_and_answer

logger = logging.getLogger(__name__)


@dataclass
class TracedRuns:
    """The program run once over a set of examples, traced."""

    rows: list[dict[str, Any]]  # bootstrap_trace_data rows of the runs that did not crash
    passing: list[dict[str, Any]]  # those whose score passes
    scores: list[float]  # the metric per example (failures and crashes score 0)

    @property
    def score(self) -> float:
        return sum(self.scores) / len(self.scores) if self.scores else math.nan


def trace_program(
    program: dspy.Module,
    examples: Sequence[dspy.Example],
    metric: Callable[..., Any],
    *,
    threshold: float | None,
    num_threads: int,
    max_errors: int,
) -> TracedRuns:
    """Run ``program`` on ``examples`` with DSPy's trace machinery. A forward that raises counts
    as a failure (as in ``dspy.Evaluate``); more than ``max_errors`` of them stop with the error."""
    from dspy.teleprompt.bootstrap_trace import FailedPrediction, bootstrap_trace_data

    def numeric(example: Any, prediction: Any, trace: Any = None) -> float:
        return metric_value(metric(example, prediction, trace))

    rows = bootstrap_trace_data(
        program,
        list(examples),
        numeric,
        num_threads=num_threads,
        raise_on_error=False,
        capture_crashes=True,
        failure_score=0.0,
    )
    crashed = [row for row in rows if isinstance(row["prediction"], FailedPrediction)]
    if len(crashed) > max_errors:
        raise GreaterError(
            f"The program raised on {len(crashed)} of {len(rows)} training examples (more than "
            f"max_errors={max_errors}); the last: {crashed[-1]['prediction'].completion_text}. "
            "Fix the program or raise max_errors."
        )
    for row in crashed:
        logger.warning(
            "The program failed on %s: %s (scored 0).",
            row["example"],
            row["prediction"].completion_text,
        )
    scores = [
        0.0 if isinstance(row["prediction"], FailedPrediction) else float(row["score"] or 0)
        for row in rows
    ]
    ran = [row for row in rows if not isinstance(row["prediction"], FailedPrediction)]
    passing = [row for row in ran if passes(float(row["score"] or 0), threshold)]
    return TracedRuns(ran, passing, scores)


def target_field(name: str, signature: Any) -> str:
    """The output field GReaTer targets in predictor ``name``: the one after the reasoning."""
    return reasoning_and_answer(signature, f"predictor {name!r}")[1]


def _calls(predictor: Any, rows: Sequence[dict[str, Any]]):
    """(row, inputs, outputs) of every call of ``predictor`` in ``rows``, in order."""
    for row in rows:
        for traced, inputs, outputs in row["trace"]:
            if traced is predictor:
                yield row, inputs, outputs


def _example(signature: Any, inputs: dict[str, Any], target: str, value: Any) -> dspy.Example:
    fields = {k: inputs[k] for k in signature.input_fields if k in inputs}
    return dspy.Example(**fields, **{target: value}).with_inputs(*fields)


def stage_examples(name: str, predictor: Any, runs: TracedRuns) -> list[dspy.Example]:
    """Every call of ``predictor`` in the passing runs (a predictor called twice in a forward
    contributes both calls), as examples: the traced inputs plus the traced target value."""
    signature = predictor.signature
    target = target_field(name, signature)
    examples = []
    for _, inputs, outputs in _calls(predictor, runs.passing):
        value = outputs.get(target) if hasattr(outputs, "get") else None
        if value is None or (isinstance(value, str) and not value.strip()):
            continue  # nothing to target
        examples.append(_example(signature, inputs, target, value))
    return examples


def final_predictor(runs: TracedRuns, field: str) -> Any | None:
    """The predictor that writes the program's output ``field``: in the traced runs, the last
    call whose ``field`` is the value the program returned (None if no run shows one)."""
    for row in runs.rows:
        value = row["prediction"].get(field) if hasattr(row["prediction"], "get") else None
        for predictor, _, outputs in reversed(row["trace"]):
            if hasattr(outputs, "get") and field in outputs and outputs.get(field) == value:
                return predictor
    return None


def label_examples(name: str, predictor: Any, runs: TracedRuns) -> list[dspy.Example]:
    """Every call of ``predictor`` in every run, passing or not, targeting the example's own
    label of the same name (for the stage that writes the program's final answer)."""
    signature = predictor.signature
    target = target_field(name, signature)
    return [
        _example(signature, inputs, target, row["example"][target])
        for row, inputs, _ in _calls(predictor, runs.rows)
        if target in row["example"]
    ]


def stage_targets(
    name: str, predictor: Any, traced: TracedRuns, trainset: Sequence[dspy.Example], needed: int
) -> tuple[list[dspy.Example], str, str | None]:
    """A pipeline stage's examples for the gradient loss, their source (``"traces"`` or
    ``"labels"``), and why the stage is skipped (None when it is not): the passing calls, or, for
    the stage that writes the program's answer when they are too few, its calls with the
    examples' own labels."""
    examples, source, skipped = stage_examples(name, predictor, traced), "traces", None
    if len(examples) < needed:
        target = target_field(name, predictor.signature)
        labelled = []
        if predictor is final_predictor(traced, target) and all(target in ex for ex in trainset):
            labelled = label_examples(name, predictor, traced)
        if len(labelled) >= needed:
            logger.warning(
                "Only %d passing calls of %s; its targets are the examples' own "
                "labels instead (%d calls).",
                len(examples),
                name,
                len(labelled),
            )
            examples, source = labelled, "labels"
        else:
            skipped = (
                f"{len(examples)} passing calls in {len(traced.passing)} passing runs "
                f"(of {len(trainset)}); it needs {needed}. Add training examples."
            )
    return examples, source, skipped
