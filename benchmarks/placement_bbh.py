"""Which instruction placement GReaTer optimizes better: the system message or after the inputs.

For each BBH task and each placement of :class:`ForcedExtractionAdapter`, a typed
``ChainOfThought`` (:func:`dspy_greater.bbh_program`) starts from the same instructions and
``GReaTer`` optimizes them on a seeded train split, choosing on a dev split; the start and the
result are then scored on a test split never used for selection, under the same placement.
Prints a Markdown table (accuracy ± standard error beside the majority-class rate) and writes the
raw numbers as JSON. Runs resume from ``--run-root`` (a finished run is only re-evaluated).

    python benchmarks/placement_bbh.py [--tasks causal_judgement,navigate] [--steps 8]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import dspy
from common import load_bbh

import dspy_greater
from dspy_greater import ForcedExtractionAdapter, GReaTer, stats
from dspy_greater.lm import local_lm
from dspy_greater.search import PAPER_PROMPT

PLACEMENTS = ("system", "after_inputs")


def run_one(task: str, placement: str, args: argparse.Namespace) -> dict:
    examples = load_bbh(task)
    splits = dspy_greater.split(examples, train=args.train, dev=args.dev, seed=args.seed)
    test = splits.test[: args.test]
    adapter = ForcedExtractionAdapter(instructions=placement)
    program = dspy_greater.bbh_program(examples, args.start)
    run_dir = Path(args.run_root) / task / placement
    resume = (run_dir / "run.json").exists()
    started = time.perf_counter()
    with dspy.context(adapter=adapter):
        optimizer = GReaTer(
            metric=dspy_greater.bbh_metric,
            auto=args.budget,
            steps=args.steps,
            adapter=adapter,
            seed=args.seed,
            validate_every_step=False,
        )
        compiled = optimizer.compile(
            program, trainset=splits.train, valset=splits.dev, run_dir=run_dir, resume=resume
        )
        optimized_seconds = time.perf_counter() - started
        before, after = stats.accuracy(program, test), stats.accuracy(compiled, test)
    run = compiled.greater_run
    return {
        "task": task,
        "placement": placement,
        "start": run.start_instructions,
        "instructions": run.instructions,
        "validation_start": run.validation[run.start_instructions],
        "validation_best": run.validation[run.instructions],
        "validation_size": len(splits.dev),
        "test_start": before,
        "test_best": after,
        "test_size": len(test),
        "majority": stats.majority_class_rate(test),
        "compile_seconds": optimized_seconds,
        "resumed": resume,
    }


def table(rows: list[dict]) -> str:
    se = stats.standard_error
    lines = [
        "| task | placement | test: start | test: optimized | majority | val: start → chosen "
        "| compile (s) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        n = r["test_size"]
        lines.append(
            f"| {r['task']} | {r['placement']} "
            f"| {r['test_start']:.3f} ± {se(r['test_start'], n):.3f}"
            f" | {r['test_best']:.3f} ± {se(r['test_best'], n):.3f} | {r['majority']:.3f} | "
            f"{r['validation_start']:.3f} → {r['validation_best']:.3f} | "
            f"{r['compile_seconds']:.0f}{' (resumed)' if r['resumed'] else ''} |"
        )
    lines += [
        "",
        "| placement | mean test: start | mean test: optimized | mean gain | mean majority |",
        "| --- | --- | --- | --- | --- |",
    ]
    for placement in dict.fromkeys(r["placement"] for r in rows):
        mine = [r for r in rows if r["placement"] == placement]
        start = statistics.mean(r["test_start"] for r in mine)
        best = statistics.mean(r["test_best"] for r in mine)
        majority = statistics.mean(r["majority"] for r in mine)
        lines.append(
            f"| {placement} | {start:.3f} | {best:.3f} | {best - start:+.3f} | {majority:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tasks",
        default="causal_judgement,sports_understanding,navigate,web_of_lies",
        help="comma-separated BBH tasks (../shared/data/bbh or shipped)",
    )
    parser.add_argument("--placements", default=",".join(PLACEMENTS))
    parser.add_argument(
        "--start",
        default=PAPER_PROMPT,
        help="starting instructions (default: the paper's initial prompt)",
    )
    parser.add_argument("--budget", default="light", choices=["light", "medium", "heavy"])
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--train", type=int, default=12)
    parser.add_argument("--dev", type=int, default=16)
    parser.add_argument("--test", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-tokens", type=int, default=128, help="reasoning tokens per call")
    parser.add_argument("--run-root", default="benchmarks/runs/placement")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("dspy", "vllm", "httpx", "LiteLLM"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    dspy.configure(lm=local_lm(max_tokens=args.max_tokens))
    rows = []
    for task in args.tasks.split(","):
        for placement in args.placements.split(","):
            rows.append(run_one(task, placement, args))
            logging.info("done: %s", rows[-1])
            if args.out:
                Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    print(table(rows))


if __name__ == "__main__":  # vLLM starts worker processes with spawn: keep this guard
    main()
