"""A real GReaTer optimization on an embedded model, on CPU: start and result on held-out questions.

A DSPy ``ChainOfThought`` program (its answer typed with the task's labels) answers a BIG-Bench
Hard task shipped with the package through :class:`~dspy_greater.ForcedExtractionAdapter` on the
local vLLM engine; ``GReaTer`` optimizes its instructions with the model's own gradients; the start
and the result are scored on a test split never used for selection, beside the majority-class rate.

On SmolLM2 (the default) it shows the machinery in about 5 minutes on a 2-core CPU; that model
answers at chance. ``--model qwen2.5-coder-1.5b`` runs the side-by-side's benchmark cell where
GReaTer's test gain cleared its start and the majority rate: logical_deduction_seven_objects from
the paper's starting prompt, the same splits (12 train, 50 dev, 100 test), budget and bfloat16
(about 35 minutes on a 2-core AVX-512 CPU; float32 and slower where bfloat16 is slow). Rerun on a
second machine it kept the start: docs/results.md says why.

    python examples/demo.py [--model NAME] [--task NAME] [--steps N] [--run-dir DIR [--resume]]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import dspy

import dspy_greater
from dspy_greater import PAPER_PROMPT, ForcedExtractionAdapter, GReaTer, stats
from dspy_greater.lm import local_lm
from dspy_greater.loaders import load_task
from dspy_greater.logs import configure_logging
from dspy_greater.models import DEFAULT_MODEL, EMBEDDED_MODELS
from dspy_greater.stats import scores


@dataclass(frozen=True)
class Demo:
    """What the demo runs on one model: a shipped task, the first ``train`` / ``dev`` / ``test``
    examples of its protocol splits (``load_task``), the starting instructions, the steps."""

    task: str
    start: str
    steps: int = 6
    train: int = 12
    dev: int = 16
    test: int = 60


DEMOS = {
    DEFAULT_MODEL: Demo("causal_judgement", "Answer the question."),
    # the side-by-side's cell (docs/results.md): its GReaTer budget and splits on this task
    "qwen2.5-coder-1.5b": Demo("logical_deduction_seven_objects", PAPER_PROMPT, dev=50, test=100),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, choices=sorted(DEMOS), help="the embedded model"
    )
    parser.add_argument(
        "--task",
        default=None,
        help=f"a shipped BBH task ({', '.join(dspy_greater.shipped_bbh_tasks())}) or the path "
        "of a BBH JSON file (default: the model's demo task)",
    )
    parser.add_argument("--steps", type=int, default=None, help="GReaTer steps (default: 6)")
    parser.add_argument("--run-dir", default=None, help="keep the run here (default: a temp dir)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    parser.add_argument("-v", "--verbose", action="store_true", help="the engines' own logs too")
    args = parser.parse_args()
    configure_logging(verbose=args.verbose)  # engines' and DSPy's own warnings only with -v

    demo = DEMOS[args.model]
    task_name, steps = args.task or demo.task, args.steps or demo.steps
    started = time.perf_counter()
    task = load_task(task_name, train=demo.train, dev=demo.dev, test=demo.test)
    train, dev, test = task.splits.train, task.splits.dev, task.splits.test
    lm = local_lm(args.model, max_tokens=128)
    dspy.configure(lm=lm, adapter=ForcedExtractionAdapter())
    program = task.program(demo.start)

    optimizer = GReaTer(metric=task.metric, auto="light", steps=steps, num_threads=48)
    compiled = optimizer.compile(
        program, trainset=train, valset=dev, run_dir=args.run_dir, resume=args.resume
    )
    run = compiled.greater_run

    start_scores, result_scores = (
        scores(p, test, task.metric, num_threads=48) for p in (program, compiled)
    )
    n = len(test)
    before, after = sum(start_scores) / n, sum(result_scores) / n
    se = stats.standard_error
    print(f"\nGReaTer on {task.name} with {EMBEDDED_MODELS[args.model].title} (CPU), {steps} steps")
    print(f"  start:     {run.start_instructions!r}")
    print(f"  optimized: {run.instructions!r}")
    print(
        f"  validation ({run.validation_size} questions): "
        f"{run.validation[run.start_instructions]:.2f} -> {run.validation[run.instructions]:.2f}"
    )
    print(
        f"  test ({n} questions, never used for selection): {before:.2f} ± {se(before, n):.2f} "
        f"-> {after:.2f} ± {se(after, n):.2f}; majority-class rate "
        f"{stats.majority_class_rate(test):.2f}"
    )
    # paired: both prompts answered the same questions
    print(f"  against the start: {stats.paired_change(start_scores, result_scores)}")
    print(
        f"  run directory: {run.run_dir} (scores.png, run.json); "
        f"{time.perf_counter() - started:.0f} s in all"
    )


if __name__ == "__main__":  # vLLM starts worker processes with spawn: keep this guard
    main()
