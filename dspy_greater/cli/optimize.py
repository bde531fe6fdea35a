"""``dspy-greater optimize``: a task's prompt, optimized by GReaTer or one of DSPy's optimizers."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from ..logs import generation_counts
from ..models import EMBEDDED_MODELS, registered_dtype
from ..optimizers import OPTIMIZERS, RESUMABLE, Setup
from ..rundir import write_json_atomically
from ..search import GreaterConfig
from .common import (
    DEFAULT_PLACEMENT,
    CliError,
    check_before_engines,
    configured_lm,
    load_task_or_fail,
    note_truncation,
)
from .resume import START, prepare_run_dir
from .spending import Spending

logger = logging.getLogger(__name__)


def settings_of(args: argparse.Namespace) -> tuple[dict[str, Any], GreaterConfig]:
    """The run's settings (what ``cli.json`` records and a resume compares) and GReaTer's search
    settings (the budget with ``--search``'s changes; its reasoning tokens are the default
    ``--max-tokens`` for every optimizer)."""
    data = args.data
    if Path(data).exists():
        data = str(Path(data).resolve())
    keys = (
        "optimizer",
        "model",
        "backend",
        "dtype",
        "device",
        "train",
        "dev",
        "test",
        "max_tokens",
        "no_cache",
        "placement",
        "instructions",
        "demos",
        "budget",
        "steps",
        "candidates",
        "depth",
        "trials",
        "metric_calls",
    )
    settings = {"data": data, "seed": 0 if args.seed is None else args.seed}
    settings.update({key: getattr(args, key) for key in keys})
    settings["search"] = dict(args.search)
    if settings["search"] and args.optimizer != "greater":
        raise CliError(f"--search sets GReaTer's search; not --optimizer {args.optimizer}.")
    try:  # a bad value fails now, not after the engines have loaded
        search = GreaterConfig.budget(args.budget, **settings["search"])
    except ValueError as exc:
        raise CliError(f"--search: {exc}") from None
    if args.max_model_len:  # only where set: runs from before the option resume unchanged
        settings["max_model_len"] = args.max_model_len
    settings["demos"] = settings["demos"] or 0
    # the search's reasoning tokens, as GReaTer(auto=...) uses them
    settings["max_tokens"] = settings["max_tokens"] or search.max_reasoning_tokens
    settings["placement"] = settings["placement"] or DEFAULT_PLACEMENT
    settings["dtype"] = settings["dtype"] or registered_dtype(settings["model"])
    if settings["model"] is not None and settings["model"] not in EMBEDDED_MODELS:
        settings["model"] = str(Path(settings["model"]).resolve())
    return settings, search


def optimize(args: argparse.Namespace) -> int:
    settings, search = settings_of(args)
    folder: Path = args.run_dir
    task = load_task_or_fail(settings)  # bad data fails before the run folder is touched
    prepare_run_dir(folder, settings, args.resume)
    if (folder / "result.json").exists():
        print(f"{folder} is finished; its result:")
        print((folder / "result.json").read_text())
        return 0
    budgets = {"--max-tokens": settings["max_tokens"]}
    if args.optimizer == "greater":
        budgets["the search's max_reasoning_tokens"] = search.max_reasoning_tokens
    splits = {"train": task.splits.train, "dev": task.splits.dev}
    check_before_engines(
        task.program(settings["instructions"]), task.metric, splits, settings, budgets
    )
    lm, reasoner = configured_lm(settings)
    counts = generation_counts(reasoner)
    logger.info("%s: %s", task.name, task.protocol)
    program = _starting_program(task, settings, folder)
    # GReaTer and GEPA continue where they stopped: count their earlier sessions' cost too.
    carried = args.resume and args.optimizer in RESUMABLE
    setup = Setup(program, task, lm, settings, folder, args.resume, args.threads)
    with Spending(folder, reasoner, carried) as spending:
        compiled, history = OPTIMIZERS[args.optimizer](setup)
        seconds, generations = spending.totals()
    if args.optimizer == "greater":  # GReaTer said how many of its generations were cut
        counts = generation_counts(reasoner)
    compiled.save(str(folder / "program.json"))
    write_json_atomically(folder / "history.json", _jsonable(history))
    from ..stats import accuracy

    dev = task.splits.dev
    scores = {}
    validated = _validated_on_dev(compiled)
    if dev and validated is not None:
        scores = {"dev_start": validated[0], "dev_result": validated[1]}
    elif dev:
        # --no-cache keeps the optimizer's cost its own; scores may reuse cached answers (the
        # start's dev score is the same in every run on a task, greedy answers are the same).
        lm.cache = True
        start = accuracy(program, dev, task.metric, num_threads=args.threads, progress=True)
        scores = {
            "dev_start": start,
            "dev_result": start
            if args.optimizer == "none"
            else accuracy(compiled, dev, task.metric, num_threads=args.threads, progress=True),
        }
    result = {
        "task": task.name,
        "protocol": task.protocol,
        "optimizer": args.optimizer,
        "instructions": {name: p.signature.instructions for name, p in compiled.named_predictors()},
        "demos": sum(len(p.demos) for _, p in compiled.named_predictors()),
        "seconds": seconds,
        "generations": generations,
        "dev_size": len(dev),
        **scores,
    }
    write_json_atomically(folder / "result.json", result)
    print(f"{task.name} · {args.optimizer}: {seconds:.0f} s, {generations} generations")
    for name, text in result["instructions"].items():
        print(f"  {name}: {text!r}")
    if scores:
        source = " (GReaTer's validation scores)" if validated is not None else ""
        print(
            f"  dev ({len(dev)}): start {scores['dev_start']:.3f} -> result "
            f"{scores['dev_result']:.3f}{source}"
        )
    print(f"  wrote {folder / 'program.json'}")
    note_truncation(reasoner, counts)
    return 0


def _starting_program(task: Any, settings: dict[str, Any], folder: Path) -> Any:
    """The task's program with the starting instructions; with ``--demos``, also the demos
    ``dspy.BootstrapFewShot`` keeps from the configured model's right answers on the train split,
    saved in the run folder so that a resumed run starts from the same ones."""
    program = task.program(settings["instructions"])
    if not settings["demos"]:
        return program
    saved = folder / START
    if not saved.exists():
        import dspy

        bootstrap = dspy.BootstrapFewShot(
            metric=task.metric, max_bootstrapped_demos=settings["demos"], max_labeled_demos=0
        )
        program = bootstrap.compile(program, trainset=task.splits.train)
        program.save(str(saved))
    else:
        program.load(str(saved))
    kept = sum(len(p.demos) for _, p in program.named_predictors())
    logger.info(
        "Starting from %d demos of the model's own (BootstrapFewShot, up to %d; %s)",
        kept,
        settings["demos"],
        saved,
    )
    return program


def _validated_on_dev(compiled: Any) -> tuple[float, float] | None:
    """GReaTer validated on the dev split (the CLI gives it as the valset) and scored the start
    and its result there: those are the dev scores, without a second pass over dev (minutes a
    pass on a 1.5B model)."""
    run = getattr(compiled, "greater_run", None)
    if run is None or run.validation_from_trainset:
        return None
    scores: tuple[float, float] | None = run.validation_of_start_and_result()
    return scores


def _jsonable(value: Any) -> Any:
    """``value`` as JSON: programs become their instructions, other objects their text."""
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if hasattr(value, "named_predictors"):
        return {name: p.signature.instructions for name, p in value.named_predictors()}
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return str(value)
