"""The optimizers the CLI and the benchmarks run side by side: GReaTer, and DSPy's COPRO,
MIPROv2 (instructions only) and GEPA with the task model as their proposer.

`OPTIMIZERS` maps each name to a factory that compiles a `Setup`. Light to import
(DSPy loads when a factory runs), so the CLI's ``--help`` stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import GreaterError


@dataclass
class Setup:
    """What an optimizer is given: the program, the task (splits and metric), the task LM, the
    CLI's settings (budgets, seed, device), the run folder, and whether to resume."""

    program: Any
    task: Any
    lm: Any
    settings: dict[str, Any]
    folder: Path
    resume: bool
    threads: int

    @property
    def train(self) -> list[Any]:
        return self.task.splits.train

    @property
    def dev(self) -> list[Any] | None:
        return self.task.splits.dev or None


# A factory returns the compiled program and a JSON-able history of how it got there.
Factory = Callable[[Setup], tuple[Any, Any]]


def _none(setup: Setup) -> tuple[Any, Any]:
    return setup.program.deepcopy(), {"note": "the starting program, unchanged"}


def _greater(setup: Setup) -> tuple[Any, Any]:
    from .search import GreaterConfig
    from .teleprompter import GReaTer

    settings = setup.settings
    search = settings.get("search", {})
    optimizer = GReaTer(
        metric=setup.task.metric,
        config=GreaterConfig.budget(settings["budget"], seed=settings["seed"], **search),
        steps=settings["steps"],
        seed=settings["seed"],
        dtype=settings["dtype"],
        device=settings["device"],
        num_threads=setup.threads,
    )
    run_dir = setup.folder / "greater"
    compiled = optimizer.compile(
        setup.program,
        trainset=setup.train,
        valset=setup.dev,
        run_dir=run_dir,
        resume=setup.resume and (run_dir / "run.json").exists(),
    )
    return compiled, {"run_dir": str(run_dir), "note": "the full history is in run_dir"}


def _copro(setup: Setup) -> tuple[Any, Any]:
    import dspy

    optimizer = dspy.COPRO(
        prompt_model=setup.lm,
        metric=setup.task.metric,
        breadth=setup.settings["candidates"],
        depth=setup.settings["depth"],
        track_stats=True,
    )
    # COPRO selects on its trainset: it gets train and dev, the data GReaTer sees in all.
    compiled = optimizer.compile(
        setup.program,
        trainset=setup.train + (setup.dev or []),
        eval_kwargs={"num_threads": setup.threads, "display_progress": False},
    )
    return compiled, {"candidates": getattr(compiled, "candidate_programs", [])}


def _miprov2(setup: Setup) -> tuple[Any, Any]:
    import dspy

    try:
        import optuna  # noqa: F401  (MIPROv2 imports it only after its proposals)
    except ImportError as exc:
        raise GreaterError("MIPROv2 needs optuna: pip install 'dspy-greater[optimizers]'.") from exc
    optimizer = dspy.MIPROv2(
        metric=setup.task.metric,
        prompt_model=setup.lm,
        task_model=setup.lm,
        max_bootstrapped_demos=0,
        max_labeled_demos=0,
        auto=None,
        num_candidates=setup.settings["candidates"],
        num_threads=setup.threads,
        seed=setup.settings["seed"],
        verbose=False,
    )
    dev = setup.dev
    compiled = optimizer.compile(
        setup.program,
        trainset=setup.train,
        valset=dev,
        num_trials=setup.settings["trials"],
        minibatch=len(dev or []) > 35,
        requires_permission_to_run=False,
    )
    return compiled, {"trials": getattr(compiled, "trial_logs", {})}


def gepa_feedback(metric: Callable[..., Any]) -> Callable[..., Any]:
    """GEPA's metric from a task's: the score, and as feedback whether the answer was right and,
    if not, the gold answer."""
    import dspy

    def feedback(
        gold: Any, pred: Any, trace: Any = None, pred_name: Any = None, pred_trace: Any = None
    ) -> Any:
        right = bool(metric(gold, pred))
        text = "Correct." if right else f"Wrong: the answer is {gold.answer}."
        return dspy.Prediction(score=float(right), feedback=text)

    return feedback


def _gepa(setup: Setup) -> tuple[Any, Any]:
    import dspy

    optimizer = dspy.GEPA(
        metric=gepa_feedback(setup.task.metric),
        max_metric_calls=setup.settings["metric_calls"],
        reflection_lm=setup.lm,
        num_threads=setup.threads,
        seed=setup.settings["seed"],
        log_dir=str(setup.folder / "gepa"),
        track_stats=True,
    )
    compiled = optimizer.compile(setup.program, trainset=setup.train, valset=setup.dev)
    results = getattr(compiled, "detailed_results", None)
    return compiled, {
        "candidates": getattr(results, "candidates", []),
        "scores": getattr(results, "val_aggregate_scores", []),
    }


OPTIMIZERS: dict[str, Factory] = {
    "greater": _greater,
    "copro": _copro,
    "miprov2": _miprov2,
    "gepa": _gepa,
    "none": _none,
}
RESUMABLE = ("greater", "gepa")  # the others start again on --resume
