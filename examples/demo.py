"""A real GReaTer optimization on the embedded SmolLM2, on CPU, in minutes.

A DSPy ``ChainOfThought`` program (its answer typed with the task's labels) answers a BIG-Bench
Hard task shipped with the package through :class:`~dspy_greater.ForcedExtractionAdapter` on the
local vLLM engine; ``GReaTer`` optimizes its instructions with the model's own gradients; the start
and the result are scored on a test split never used for selection, beside the majority-class rate.
About 11 minutes on a 2-core CPU. ``--model qwen2.5-coder-1.5b`` runs it on the second embedded
model (bfloat16, float32 on a CPU without AVX-512; 2 steps by default: each takes minutes there).

    python examples/demo.py [--model NAME] [--task causal_judgement] [--steps 6] [--run-dir DIR]
"""

from __future__ import annotations

import argparse
import time

import dspy

import dspy_greater
from dspy_greater import ForcedExtractionAdapter, GReaTer
from dspy_greater.lm import local_lm
from dspy_greater.logs import configure_logging
from dspy_greater.models import DEFAULT_MODEL, EMBEDDED_MODELS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--task",
        default="causal_judgement",
        help=f"a shipped BBH task ({', '.join(dspy_greater.shipped_bbh_tasks())}) "
        "or the path of a BBH JSON file",
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        choices=sorted(EMBEDDED_MODELS),
        help="the embedded model",
    )
    parser.add_argument("--steps", type=int, default=None, help="default: 6, on Qwen 2")
    parser.add_argument("--test", type=int, default=60, help="test questions (never selected on)")
    parser.add_argument("--run-dir", default=None, help="keep the run here (default: a temp dir)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    parser.add_argument("-v", "--verbose", action="store_true", help="the engines' own logs too")
    args = parser.parse_args()
    configure_logging(verbose=args.verbose)  # engines' and DSPy's own warnings only with -v

    entry = EMBEDDED_MODELS[args.model]
    steps = args.steps or (6 if args.model == DEFAULT_MODEL else 2)
    started = time.perf_counter()
    examples = dspy_greater.load_bbh(args.task)
    splits = dspy_greater.split(examples, train=12, dev=16, seed=0)
    test = splits.test[: args.test]
    lm = local_lm(args.model, max_tokens=128)
    dspy.configure(lm=lm, adapter=ForcedExtractionAdapter())
    program = dspy_greater.bbh_program(examples, "Answer the question.")

    optimizer = GReaTer(metric=dspy_greater.bbh_metric, auto="light", steps=steps)
    compiled = optimizer.compile(
        program, trainset=splits.train, valset=splits.dev, run_dir=args.run_dir, resume=args.resume
    )
    run = compiled.greater_run

    before, after = dspy_greater.accuracy(program, test), dspy_greater.accuracy(compiled, test)
    n = len(test)
    se = dspy_greater.standard_error
    print(f"\nGReaTer on {args.task} with {entry.title} (CPU), {steps} steps")
    print(f"  start:     {run.start_instructions!r}")
    print(f"  optimized: {run.instructions!r}")
    print(
        f"  validation ({run.validation_size} questions): "
        f"{run.validation[run.start_instructions]:.2f} -> {run.validation[run.instructions]:.2f}"
    )
    print(
        f"  test ({n} questions, never used for selection): {before:.2f} ± {se(before, n):.2f} "
        f"-> {after:.2f} ± {se(after, n):.2f}; majority-class rate "
        f"{dspy_greater.majority_class_rate(test):.2f}"
    )
    print(
        f"  run directory: {run.run_dir} (scores.png, run.json); "
        f"{time.perf_counter() - started:.0f} s in all"
    )


if __name__ == "__main__":  # vLLM starts worker processes with spawn: keep this guard
    main()
