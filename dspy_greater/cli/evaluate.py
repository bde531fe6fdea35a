"""``dspy-greater evaluate``: a saved program's accuracy on a split, on this or another model."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ..logs import generation_counts, generations_since
from ..models import EMBEDDED_MODELS, registered_dtype
from ..rundir import write_json_atomically
from ..search import GreaterConfig
from .common import (
    DEFAULT_PLACEMENT,
    CliError,
    check_before_engines,
    configured_lm,
    load_task_or_fail,
    note_truncation,
    writable_folder,
)
from .resume import SETTINGS

# A program evaluated without its run's settings: the light budget's reasoning tokens.
DEFAULT_MAX_TOKENS = GreaterConfig.budget("light").max_reasoning_tokens


def evaluate(args: argparse.Namespace) -> int:
    path: Path = args.program
    if path.is_dir():
        path = path / "program.json"
    if not path.is_file():
        raise CliError(
            f"No program at {path}: give the program.json that `dspy-greater optimize` "
            "wrote (or its run folder)."
        )
    stored_path = path.parent / SETTINGS
    stored = json.loads(stored_path.read_text()) if stored_path.exists() else {}
    settings = {
        "data": args.data or stored.get("data"),
        "seed": args.seed if args.seed is not None else stored.get("seed", 0),
    }
    for key in ("train", "dev", "test"):
        settings[key] = getattr(args, key) or stored.get(key)
    if settings["data"] is None:
        raise CliError(f"Which data? {path.parent} has no {SETTINGS}; pass --data.")
    # the run's model, engine and dtype unless --model names another (transfer): its dev scores
    # were measured on them
    model = args.model
    if model is not None and model not in EMBEDDED_MODELS and Path(model).is_dir():
        model = str(Path(model).resolve())
    run = stored if model is None or model == stored.get("model") else {}
    model = model or run.get("model")
    settings.update(
        model=model,
        backend=args.backend or run.get("backend", "auto"),
        dtype=args.dtype or run.get("dtype") or registered_dtype(model),
        device=args.device,
        max_tokens=args.max_tokens or stored.get("max_tokens", DEFAULT_MAX_TOKENS),
        no_cache=args.no_cache,
        placement=args.placement or stored.get("placement", DEFAULT_PLACEMENT),
        max_model_len=args.max_model_len or run.get("max_model_len"),
    )
    model_name = Path(model).name if model else "embedded"
    out = args.out or path.parent / f"evaluate-{args.split}-{model_name}.json"
    if out.is_dir():
        raise CliError(f"--out {out} is a folder; give the path of a JSON file to write.")
    writable_folder(out.parent)
    task = load_task_or_fail(settings)
    examples = getattr(task.splits, args.split)
    if not examples:
        raise CliError(f"The {args.split} split of {task.name} is empty with these sizes.")
    program = _load_program(path, task)  # before the engine: a bad file fails in a second
    check_before_engines(
        program,
        task.metric,
        {args.split: examples},
        settings,
        {"--max-tokens": settings["max_tokens"]},
    )
    _, reasoner = configured_lm(settings)
    from ..stats import majority_class_rate, scores, standard_error

    started, counts = time.perf_counter(), generation_counts(reasoner)
    each = scores(program, examples, task.metric, num_threads=args.threads, progress=True)
    score = sum(each) / len(each)
    generated, cut = generations_since(reasoner, counts)
    result = {
        "program": str(path),
        "task": task.name,
        "protocol": task.protocol,
        "split": args.split,
        "n": len(examples),
        "model": model or "embedded",
        "backend": settings["backend"],
        "dtype": settings["dtype"],
        "placement": settings["placement"],
        "accuracy": score,
        "standard_error": standard_error(score, len(examples)),
        "majority": majority_class_rate(examples),
        "seconds": time.perf_counter() - started,
        "generations": generated,
        # of those, stopped at the token limit (what DSPy's cache answered is in neither)
        "generations_cut": cut,
        "instructions": {n: p.signature.instructions for n, p in program.named_predictors()},
        # each question's score in the split's order: two programs compare question by question
        "scores": each,
    }
    write_json_atomically(out, result)
    print(
        f"{task.name} {args.split} (n={len(examples)}): accuracy {score:.3f} ± "
        f"{result['standard_error']:.3f} (majority class {result['majority']:.3f}); wrote {out}"
    )
    note_truncation(reasoner, counts)
    return 0


def _load_program(path: Path, task: Any) -> Any:
    """The task's program with the state saved at ``path``, or a `CliError` that says
    why the file is not one."""
    try:
        saved = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CliError(
            f"{path} is not a program saved by `dspy-greater optimize` (not JSON: "
            f"{exc}). Give the program.json of a run folder."
        ) from exc
    program = task.program()
    names = [name for name, _ in program.named_predictors()]
    if not isinstance(saved, dict) or not all(isinstance(saved.get(n), dict) for n in names):
        shape = sorted(saved) if isinstance(saved, dict) else type(saved).__name__
        raise CliError(
            f"{path} is not a program saved by `dspy-greater optimize`: it should "
            f"hold the predictor(s) {names}, and holds {shape}. Give the "
            "program.json of a run folder."
        )
    try:
        program.load(str(path))
    except Exception as exc:  # DSPy raises several kinds for a program of another shape
        raise CliError(
            f"{path} does not fit a ChainOfThought for {task.name} ({exc}). Evaluate "
            "it with the --data it was optimized on."
        ) from exc
    return program
