"""The command line's parser: its commands, options, defaults and help."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from ..models import DEFAULT_MODEL, EMBEDDED_MODELS
from ..optimizers import OPTIMIZERS
from ..search import PAPER_PROMPT, GreaterConfig


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
    optimize.set_defaults(command="optimize")

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
    evaluate.set_defaults(command="evaluate")
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
    parser.add_argument(
        "--device",
        default="auto",
        help="device of the gradient model (auto: cuda where torch sees a GPU, else cpu)",
    )
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
        help="reasoning tokens per call (default: the budget's; evaluate: the run's)",
    )
    parser.add_argument(
        "--max-model-len",
        type=_positive,
        default=None,
        help="vLLM's context, prompt and new tokens together (default 4096; up to the model's "
        "own limit): raise it for long inputs",
    )
    parser.add_argument("--threads", type=_positive, default=16, help="parallel program calls")
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="do not use DSPy's LM cache (optimize: while optimizing, so that its time and "
        "generations are its own; the dev scores after it may reuse cached answers)",
    )


def _search_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` for a `GreaterConfig` field, the value of the field's type."""
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
