"""The ``dspy-greater`` command line: optimize a task's prompt with GReaTer or one of DSPy's
optimizers, and evaluate a saved program (on another model, for transfer).

    dspy-greater optimize --data sports_understanding --optimizer greater --run-dir runs/su
    dspy-greater evaluate --program runs/su/program.json --split test

Exit codes: 0 done; 1 the run stopped on an error (the message says what and how to fix it);
2 a bad command line; 130 interrupted, 143 terminated (``--resume`` continues a GReaTer or GEPA
run).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .errors import GreaterError  # light: no torch, no DSPy, so `--help` stays fast
from .logs import configure_logging, generation_counts, generations_since, truncation_note
from .models import DEFAULT_MODEL, EMBEDDED_MODELS, registered_dtype
from .optimizers import OPTIMIZERS, RESUMABLE, Setup
from .rundir import write_json_atomically
from .search import PAPER_PROMPT, GreaterConfig

SETTINGS = "cli.json"  # what `optimize` was asked to do: a resumed run must ask the same
START = "start.json"  # the starting program with --demos: a resumed run starts from the same
# Settings added since the first release, as runs that did not store them had them.
SETTINGS_BEFORE_THEY_WERE_KEPT: dict[str, Any] = {
    "dtype": "float32",
    "search": {},
    "placement": "system",  # the only placement before --placement (not DEFAULT_PLACEMENT)
    "demos": 0,
}
EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 1, 2, 130, 143
DEFAULT_MAX_TOKENS = 128
DEFAULT_PLACEMENT = "system"  # DSPy's own: the instructions in the system message

logger = logging.getLogger(__name__)


class CliError(Exception):
    """A problem the user can fix; printed without a traceback."""


# -- the parser ----------------------------------------------------------------------------------
class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default where there is one (not None, not an off switch)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dspy-greater",
        description="Optimize a task's prompt with GReaTer (or COPRO, MIPROv2, GEPA) on a local "
        "model, and evaluate saved programs, on this or another model.",
        epilog="Exit codes: 0 done, 1 error (message says how to fix it), 2 bad command line, "
        "130 interrupted, 143 terminated (resume with --resume).",
        formatter_class=_Formatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logs")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    optimize = commands.add_parser(
        "optimize",
        formatter_class=_Formatter,
        help="optimize the instructions of a task's ChainOfThought program",
        description="Optimize the instructions of a ChainOfThought program for a task and write "
        "the compiled program (program.json), the run's settings (cli.json), its "
        "result (result.json) and the optimizer's history into --run-dir.",
    )
    _data_options(optimize)
    optimize.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default="greater",
        help="greater: GReaTer; copro, miprov2 (instructions only, no demos) "
        "and gepa use the same model as proposer; none: the start",
    )
    optimize.add_argument(
        "--run-dir",
        required=True,
        type=Path,
        help="folder for the program and the history (refused if it holds "
        "another run, unless --resume)",
    )
    optimize.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --run-dir (same settings required)",
    )
    optimize.add_argument(
        "--instructions",
        default=PAPER_PROMPT,
        help="starting instructions (default: the paper's starting prompt)",
    )
    optimize.add_argument(
        "--demos",
        type=_positive,
        default=None,
        help="start from the program with up to N demos that dspy.BootstrapFewShot keeps from "
        "the model's own right answers on the train split, as a DSPy user's program may hold "
        "before an instruction optimizer (every optimizer starts from it)",
    )
    optimize.add_argument(
        "--budget",
        choices=("light", "medium", "heavy"),
        default="light",
        help="GReaTer's budget (its auto=)",
    )
    optimize.add_argument(
        "--steps", type=_positive, default=None, help="GReaTer steps (default: the budget's)"
    )
    optimize.add_argument(
        "--search",
        metavar="KEY=VALUE",
        type=_search_option,
        action="append",
        default=[],
        help="set one of GReaTer's search settings (a GreaterConfig field) over the budget's, "
        "e.g. --search num_examples=12 --search keep_current=true; repeatable",
    )
    optimize.add_argument(
        "--candidates",
        type=_positive,
        default=6,
        help="COPRO breadth / MIPROv2 instruction candidates",
    )
    optimize.add_argument("--depth", type=_positive, default=2, help="COPRO depth")
    optimize.add_argument("--trials", type=_positive, default=8, help="MIPROv2 trials")
    optimize.add_argument(
        "--metric-calls", type=_positive, default=150, help="GEPA's budget of metric calls"
    )
    optimize.set_defaults(run=_optimize)

    evaluate = commands.add_parser(
        "evaluate",
        formatter_class=_Formatter,
        help="score a saved program on a split (any model: transfer)",
        description="Load a program saved by `optimize` and print its accuracy on a split, with "
        "its standard error and the split's majority-class rate; also written as "
        "JSON. Data and split settings default to those in the run's cli.json.",
    )
    evaluate.add_argument(
        "--program",
        required=True,
        type=Path,
        help="program.json written by optimize (or its run folder)",
    )
    _data_options(evaluate, required=False)
    evaluate.add_argument(
        "--split",
        choices=("train", "dev", "test"),
        default="test",
        help="which split of the data to score",
    )
    evaluate.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON result (default: evaluate-SPLIT-MODEL.json beside the program)",
    )
    evaluate.set_defaults(run=_evaluate)
    return parser


def _data_options(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument(
        "--data",
        required=required,
        default=None,
        help="a shipped BBH task name, a BBH JSON file, a GSM8K or FOLIO folder, "
        "or a hub name (gsm8k, folio)",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="a Hugging Face model folder, or an embedded model's name: "
        + ", ".join(EMBEDDED_MODELS)
        + (f" (default: {DEFAULT_MODEL})" if required else " (default: the run's)"),
    )
    parser.add_argument(
        "--backend",
        choices=("auto", "vllm", "hf"),
        default="auto" if required else None,  # evaluate: the run's
        help="reasoner engine (auto: vLLM when installed)"
        + ("" if required else "; default: the run's, on its model"),
    )
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default=None,
        help="both engines' dtype (default: an embedded model's registered one "
        "(qwen2.5-coder-1.5b: bfloat16, float32 on a CPU without AVX-512), float32 for a "
        "folder; evaluate: the run's, on its model); a gradient model of bfloat16 weights "
        "computes in float32 where bfloat16 is slow",
    )
    parser.add_argument("--device", default="cpu", help="device of the gradient model (cpu, cuda)")
    parser.add_argument(
        "--placement",
        choices=("system", "after_inputs"),
        default=None,
        help="where the instructions go: DSPy's system message, or after the inputs in the "
        "last user message, as the paper places its prompt (default: system; evaluate: the run's)",
    )
    parser.add_argument(
        "--train",
        type=_positive,
        default=None,
        help="training examples (default: the task's protocol)",
    )
    parser.add_argument(
        "--dev", type=_positive, default=None, help="dev examples (default: the task's protocol)"
    )
    parser.add_argument(
        "--test", type=_positive, default=None, help="keep the first N test examples"
    )
    parser.add_argument("--seed", type=int, default=None, help="split and search seed (default 0)")
    parser.add_argument(
        "--max-tokens",
        type=_positive,
        default=None,
        help="reasoning tokens per call (default: 128; evaluate: the run's)",
    )
    parser.add_argument("--threads", type=_positive, default=16, help="parallel program calls")
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="do not use DSPy's LM cache (optimize: while optimizing, so that its time and "
        "generations are its own; the dev scores after it may reuse cached answers)",
    )


def _search_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` for a :class:`GreaterConfig` field, the value of the field's type."""
    key, sep, value = text.partition("=")
    own_options = ("steps", "seed")  # --steps and --seed
    defaults: dict[str, Any] = {
        f.name: f.default for f in dataclasses.fields(GreaterConfig) if f.name not in own_options
    }
    if not sep or key not in defaults:
        raise argparse.ArgumentTypeError(
            f"expected KEY=VALUE with KEY one of {', '.join(defaults)}; got {text!r}"
        )
    kind = type(defaults[key])
    try:
        if kind is bool:
            if value.lower() not in ("true", "false"):
                raise ValueError(value)
            return key, value.lower() == "true"
        if defaults[key] is None:  # the filler: a token, or none for the model's likeliest
            return key, None if value.lower() == "none" else value
        return key, kind(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{key} takes a{'n' if kind is int else ''} {kind.__name__}"
            f"{' (true or false)' if kind is bool else ''}; got {value!r}"
        ) from None


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


# -- shared set-up -------------------------------------------------------------------------------
def _writable_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise CliError(
            f"Cannot write to {folder} ({exc.strerror or exc}); choose a writable folder."
        ) from exc


def _task(settings: dict[str, Any]) -> Any:
    from .loaders import load_task

    try:
        return load_task(
            settings["data"],
            train=settings["train"],
            dev=settings["dev"],
            test=settings["test"],
            seed=settings["seed"],
        )
    except (FileNotFoundError, ValueError) as exc:
        raise CliError(str(exc)) from exc


def _lm(settings: dict[str, Any]) -> tuple[Any, Any]:
    """The task LM on the local model, with the forced-extraction adapter configured, and its
    reasoner (it counts every generation: DSPy's calls and GReaTer's search)."""
    import dspy

    from .adapter import ForcedExtractionAdapter
    from .engines.hf import resolve_device
    from .lm import local_lm, local_reasoner

    resolve_device(settings["device"])
    model = settings["model"]
    if model is not None and model not in EMBEDDED_MODELS and not Path(model).is_dir():
        raise CliError(
            f"--model {model}: no such folder. Give a Hugging Face model folder "
            "(config.json, weights, tokenizer), the name of an embedded model "
            f"({', '.join(EMBEDDED_MODELS)}), or leave it out for {DEFAULT_MODEL}."
        )
    lm = local_lm(
        model,
        backend=settings["backend"],
        dtype=settings["dtype"],
        max_tokens=settings["max_tokens"],
        cache=not settings["no_cache"],
    )
    dspy.configure(lm=lm, adapter=ForcedExtractionAdapter(instructions=settings["placement"]))
    return lm, local_reasoner(lm)


class _Spending:
    """The wall time and generations a run has spent, kept in ``spent.json`` (every
    ``every`` seconds from a background thread, and on the way out) so that a resumed run
    reports what all its sessions spent, even when an earlier one was killed."""

    FILE = "spent.json"

    def __init__(self, folder: Path, reasoner: Any, carried: bool, every: float = 30.0) -> None:
        self.file, self.reasoner, self.every = folder / self.FILE, reasoner, every
        earlier = json.loads(self.file.read_text()) if carried and self.file.exists() else {}
        self.earlier_seconds = float(earlier.get("seconds", 0.0))
        self.earlier_generations = int(earlier.get("generations", 0))
        self.started, self.generated = time.perf_counter(), self._generations()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._keep, name="dspy-greater-spent", daemon=True)

    def totals(self) -> tuple[float, int]:
        return (
            self.earlier_seconds + time.perf_counter() - self.started,
            self.earlier_generations + self._generations() - self.generated,
        )

    def _generations(self) -> int:
        return generation_counts(self.reasoner)[0]

    def save(self) -> None:
        seconds, generations = self.totals()
        write_json_atomically(self.file, {"seconds": seconds, "generations": generations})

    def _keep(self) -> None:
        while not self._stop.wait(self.every):
            self.save()

    def __enter__(self) -> _Spending:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.save()


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


# -- optimize ------------------------------------------------------------------------------------
def _settings(args: argparse.Namespace) -> dict[str, Any]:
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
    if settings["search"]:
        if args.optimizer != "greater":
            raise CliError(f"--search sets GReaTer's search; not --optimizer {args.optimizer}.")
        try:  # a bad value fails now, not after the engines have loaded
            GreaterConfig.budget(args.budget, **settings["search"])
        except ValueError as exc:
            raise CliError(f"--search: {exc}") from None
    settings["demos"] = settings["demos"] or 0
    settings["max_tokens"] = settings["max_tokens"] or DEFAULT_MAX_TOKENS
    settings["placement"] = settings["placement"] or DEFAULT_PLACEMENT
    settings["dtype"] = settings["dtype"] or registered_dtype(settings["model"])
    if settings["model"] is not None and settings["model"] not in EMBEDDED_MODELS:
        settings["model"] = str(Path(settings["model"]).resolve())
    return settings


def _prepare_run_dir(folder: Path, settings: dict[str, Any], resume: bool) -> None:
    if folder.exists() and not folder.is_dir():
        raise CliError(
            f"--run-dir {folder} is a file, not a folder; choose a folder (new or "
            "empty, or a run's folder with --resume)."
        )
    stored = folder / SETTINGS
    if folder.exists() and any(folder.iterdir()):
        if not resume:
            raise CliError(
                f"{folder} already holds a run. Pass --resume to continue it, or "
                "choose another --run-dir."
            )
        if not stored.exists():
            raise CliError(
                f"{folder} is not a dspy-greater run folder (no {SETTINGS}); choose "
                "another --run-dir."
            )
        before = {**SETTINGS_BEFORE_THEY_WERE_KEPT, **json.loads(stored.read_text())}
        changed = [
            f"{key}: {before.get(key)!r} -> {settings.get(key)!r}"
            for key in sorted(set(before) | set(settings))
            if before.get(key) != settings.get(key)
        ]
        if changed:
            raise CliError(
                f"{folder} holds a run with other settings ({'; '.join(changed)}). "
                "Resume with the same options, or choose another --run-dir."
            )
    _writable_folder(folder)
    write_json_atomically(stored, settings)


def _optimize(args: argparse.Namespace) -> int:
    settings = _settings(args)
    folder: Path = args.run_dir
    task = _task(settings)  # bad data fails before the run folder is touched
    _prepare_run_dir(folder, settings, args.resume)
    if (folder / "result.json").exists():
        print(f"{folder} is finished; its result:")
        print((folder / "result.json").read_text())
        return 0
    lm, reasoner = _lm(settings)
    counts = generation_counts(reasoner)
    logger.info("%s: %s", task.name, task.protocol)
    program = _starting_program(task, settings, folder)
    # GReaTer and GEPA continue where they stopped: count their earlier sessions' cost too.
    carried = args.resume and args.optimizer in RESUMABLE
    setup = Setup(program, task, lm, settings, folder, args.resume, args.threads)
    with _Spending(folder, reasoner, carried) as spending:
        compiled, history = OPTIMIZERS[args.optimizer](setup)
        seconds, generations = spending.totals()
    compiled.save(str(folder / "program.json"))
    write_json_atomically(folder / "history.json", _jsonable(history))
    from .data import accuracy

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
    _note_truncation(reasoner, counts)
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


def _note_truncation(reasoner: Any, since: tuple[int, int]) -> None:
    note = truncation_note(reasoner, since)
    if note:
        logger.info(note)


# -- evaluate ------------------------------------------------------------------------------------
def _evaluate(args: argparse.Namespace) -> int:
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
    )
    model_name = Path(model).name if model else "embedded"
    out = args.out or path.parent / f"evaluate-{args.split}-{model_name}.json"
    if out.is_dir():
        raise CliError(f"--out {out} is a folder; give the path of a JSON file to write.")
    _writable_folder(out.parent)
    task = _task(settings)
    examples = getattr(task.splits, args.split)
    if not examples:
        raise CliError(f"The {args.split} split of {task.name} is empty with these sizes.")
    program = _load_program(path, task)  # before the engine: a bad file fails in a second
    _, reasoner = _lm(settings)
    from .data import majority_class_rate, scores, standard_error

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
    _note_truncation(reasoner, counts)
    return 0


def _load_program(path: Path, task: Any) -> Any:
    """The task's program with the state saved at ``path``, or a :class:`CliError` that says
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


# -- entry point ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module docstring)."""
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    sigterm = _Sigterm()
    try:
        with sigterm:
            return args.run(args)
    except BaseException as exc:
        if sigterm.received or isinstance(exc, KeyboardInterrupt):
            lm = sys.modules.get("dspy_greater.lm")  # not imported: no call to end
            if lm is not None:  # DSPy's threads would generate on, and Python wait for them
                lm.cancel_local_calls()
            print("\nInterrupted. Continue with the same command and --resume.", file=sys.stderr)
            return EXIT_TERMINATED if sigterm.received else EXIT_INTERRUPTED
        if not isinstance(exc, (CliError, GreaterError)):
            raise  # a bug: let its traceback show
        if args.verbose:
            logger.exception("the run stopped")
        print(f"dspy-greater: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


class _Sigterm:
    """SIGTERM (``kill``, a job scheduler) ends a run as Ctrl-C does, and surely: the handler
    kills vLLM's engine processes, then raises KeyboardInterrupt. Python's default, dying at once,
    leaves them running, orphaned; and vLLM swallows an exception raised while it starts (the
    engine it then fails to reach ends the run all the same)."""

    received = False
    GRACE_SECONDS = 30.0

    def __enter__(self) -> _Sigterm:
        self._previous = None
        if threading.current_thread() is threading.main_thread():  # signals reach that one only
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = True
        for process in multiprocessing.active_children():
            process.kill()
        # the last resort, should anything still wait on the killed engine
        last_resort = threading.Timer(self.GRACE_SECONDS, os._exit, (EXIT_TERMINATED,))
        last_resort.daemon = True
        last_resort.start()
        raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
