"""The report of a compile: one `StageRun` per predictor and round, the
`GReaTerRun` that holds them, their JSON in the run directory, the log summary, and the plot.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .search import GreaterResult, StepRecord
from .stats import PairedChange, standard_error

logger = logging.getLogger(__name__)


@dataclass
class StageRun:
    """One predictor's optimization (one per predictor and round)."""

    predictor: str
    round: int
    start_instructions: str
    instructions: str
    validation: dict[str, float]  # candidate instructions -> validation score (the rest fixed)
    train_scores: list[float]  # the metric on the training batch after each step
    validation_per_step: list[float | None]  # None where that step's prompt was not validated
    targets: str  # "labels" (the examples' own) or "traces" (from runs that passed the metric)
    examples: int  # how many examples the gradients were taken on
    search: GreaterResult | None = None
    skipped: str | None = None  # why this stage was not optimized
    model: str | None = None  # the folder of the model it reasoned and took gradients on
    # the chosen instructions' paired change over the start on the validation questions (None
    # where the start was chosen outright); kept_start: it was too small, the start stayed
    evidence: PairedChange | None = None
    kept_start: bool = False

    @property
    def evidence_note(self) -> str:
        """Which way the evidence went, in words ("" where there was none to weigh)."""
        if self.evidence is None:
            return ""
        verdict = "kept the start: not enough evidence" if self.kept_start else "paired change"
        return f"{verdict} ({self.evidence}, n={self.evidence.n})"

    @property
    def history(self) -> list[StepRecord]:
        """Each step's record (candidates, gradient ranks, scores, timings)."""
        return self.search.history if self.search is not None else []


@dataclass
class GReaTerRun:
    """What one compile did; also in ``run_dir/run.json``. Attached to the compiled program as
    ``compiled.greater_run`` (DSPy does not save it; the run directory keeps it). ``stages``
    holds one `StageRun` per predictor and round; for a one-predictor program the
    fields of its last round's stage read directly (``run.instructions``, ``run.history``, ...)."""

    run_dir: Path
    placement: str
    model: str | dict[str, str]  # {predictor: folder} where the predictors use other models
    proxy_model: bool  # the gradients and reasoning ran on task_lm, not the program's LM
    validation_size: int
    validation_from_trainset: bool
    stages: list[StageRun]
    seconds: float | None = None  # the compile's wall time (this session's, on a resume)

    def __str__(self) -> str:
        """A short summary: each stage's start and chosen instructions with their validation
        scores, the steps, the time and the run directory (the details are in the fields)."""
        lines = [f"GReaTerRun ({self.run_dir})"]
        for stage in self.stages:
            start = stage.validation.get(stage.start_instructions)
            chosen = stage.validation.get(stage.instructions)
            lines.append(
                f"  {stage.predictor}"
                + (f" (round {stage.round + 1})" if stage.round else "")
                + f": {stage.start_instructions!r} -> {stage.instructions!r}"
            )
            if stage.skipped:
                lines.append(f"    skipped: {stage.skipped}")
            else:
                lines.append(
                    f"    validation {_score(start)} -> {_score(chosen)} "
                    f"(n={self.validation_size}), {len(stage.history)} "
                    + ("step" if len(stage.history) == 1 else "steps")
                )
                if stage.evidence_note:
                    lines.append(f"    {stage.evidence_note}")
        if self.seconds is not None:
            lines.append(f"  {self.seconds:.0f} s")
        return "\n".join(lines)

    @property
    def only_stage(self) -> StageRun:
        """The one predictor's stage (its last round's, with ``rounds`` > 1)."""
        predictors = list(dict.fromkeys(stage.predictor for stage in self.stages))
        if len(predictors) != 1:
            raise AttributeError(
                f"This run optimized the predictors {predictors}; read their "
                "stages from run.stages."
            )
        return self.stages[-1]

    def validation_of_start_and_result(self) -> tuple[float, float] | None:
        """The whole program's validation score at the start and at the end, from the scores the
        run took (the first stage scored the start, the last one the program it returned);
        None where either was not scored (a skipped stage)."""
        first, last = self.stages[0], self.stages[-1]
        start = first.validation.get(first.start_instructions)
        result = last.validation.get(last.instructions)
        return None if start is None or result is None else (start, result)

    predictor = property(lambda self: self.only_stage.predictor)
    start_instructions = property(lambda self: self.only_stage.start_instructions)
    instructions = property(lambda self: self.only_stage.instructions)
    validation = property(lambda self: self.only_stage.validation)
    train_scores = property(lambda self: self.only_stage.train_scores)
    search = property(lambda self: self.only_stage.search)
    history = property(lambda self: self.only_stage.history)


def stage_json(stage: StageRun) -> dict[str, Any]:
    return {
        "predictor": stage.predictor,
        "round": stage.round,
        "start_instructions": stage.start_instructions,
        "instructions": stage.instructions,
        "validation": stage.validation,
        "train_scores": stage.train_scores,
        "validation_per_step": stage.validation_per_step,
        "targets": stage.targets,
        "examples": stage.examples,
        "skipped": stage.skipped,
        "model": stage.model,
        "evidence": None if stage.evidence is None else asdict(stage.evidence),
        "kept_start": stage.kept_start,
    }


def log_summary(stages: list[StageRun], validation_size: int) -> None:
    """One line per stage: its start and its result, with their validation scores."""
    for stage in stages:
        start = stage.validation.get(stage.start_instructions)
        best = stage.validation.get(stage.instructions)
        logger.info(
            "GReaTer %s (round %d): %r -> %r; validation %s -> %s (n=%d)%s",
            stage.predictor,
            stage.round,
            stage.start_instructions,
            stage.instructions,
            _with_error(start, validation_size),
            _with_error(best, validation_size),
            validation_size,
            f"; {stage.evidence_note}" if stage.evidence_note else "",
        )


def _score(score: float | None) -> str:
    return "-" if score is None else f"{score:.3f}"


def _with_error(score: float | None, n: int) -> str:
    return "-" if score is None else f"{score:.3f} ± {standard_error(score, n):.3f}"


@dataclass
class PlotPoints:
    """What the score plot shows, as (x, score) points: x is the step, counted across stages;
    each stage's choice stands one step after its last (``choice_x``)."""

    train: list[tuple[float, float]]  # the metric on the training batch after each step
    steps_validated: list[tuple[float, float]]  # the steps whose prompt was validated
    candidates: list[tuple[float, float]]  # every prompt validated for the final choice
    chosen: list[tuple[float, float, str]]  # each stage's chosen prompt, with its text
    start: float | None  # the start's validation score
    stage_starts: list[tuple[float, str]]  # where each stage begins (several stages only)


def plot_points(stages: list[StageRun]) -> PlotPoints:
    """The points of `plot_scores`: every validated prompt, and each stage's chosen one."""
    points = PlotPoints([], [], [], [], None, [])
    offset = 0
    for stage in stages:
        steps = len(stage.train_scores)
        if len(stages) > 1:
            points.stage_starts.append((offset + 0.5, stage.predictor))
        for i, (score, value) in enumerate(
            zip(stage.train_scores, stage.validation_per_step, strict=True), offset + 1
        ):
            points.train.append((i, score))
            if value is not None:
                points.steps_validated.append((i, value))
        choice_x = offset + steps + 1
        for text, value in stage.validation.items():
            if text != stage.instructions:
                points.candidates.append((choice_x, value))
        if stage.instructions in stage.validation:
            points.chosen.append(
                (choice_x, stage.validation[stage.instructions], stage.instructions)
            )
        offset += steps + 1
    first = stages[0] if stages else None
    if first is not None and first.start_instructions in first.validation:
        points.start = first.validation[first.start_instructions]
    return points


def plot_scores(path: Path, stages: list[StageRun]) -> None:
    """Train and validation scores per step (stages one after another), every prompt validated
    for the final choice and the chosen one, as a PNG. Drawn on a figure of its own, not through
    pyplot: a notebook's backend and figures stay as they are."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning("matplotlib is not installed: no plot (pip install matplotlib).")
        return
    points = plot_points(stages)
    figure = Figure(figsize=(6.5, 3.8))
    axes = figure.subplots()
    for x, name in points.stage_starts:
        axes.axvline(x, color="lightgrey")
        axes.text(
            x + 0.1, 0.02, name, fontsize=7, rotation=90, transform=axes.get_xaxis_transform()
        )
    if points.train:
        axes.plot(*zip(*points.train, strict=True), marker="o", label="train batch (metric)")
    if points.steps_validated:
        axes.plot(
            *zip(*points.steps_validated, strict=True),
            marker="s",
            linestyle="none",
            label="step's prompt (validation)",
        )
    if points.candidates:
        axes.scatter(
            *zip(*points.candidates, strict=True),
            marker="x",
            color="grey",
            label="other prompts validated",
        )
    for i, (x, value, _) in enumerate(points.chosen):
        axes.scatter(
            [x],
            [value],
            marker="*",
            s=160,
            color="crimson",
            zorder=3,
            label="chosen (validation)" if i == 0 else None,
        )
        axes.annotate(f"{value:.2f}", (x, value), textcoords="offset points", xytext=(6, 4))
    if points.start is not None:
        axes.axhline(points.start, color="grey", linestyle="--", label="start (validation)")
    axes.margins(x=0.08, y=0.12)  # room for the chosen prompt's score label
    axes.set_xlabel("step (the last column: the final choice)")
    axes.set_ylabel("score")
    axes.set_title("GReaTer")
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
