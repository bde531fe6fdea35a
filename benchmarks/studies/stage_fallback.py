"""What a pipeline's last stage should do when too few runs pass: optimize on labels, or skip.

GReaTer takes a stage's gradient targets from the runs of the program that pass the metric. When
fewer runs pass than a search needs (``subset_size``; 3 for ``auto="light"``), the stage that
writes the final answer falls back to the examples' own labels on all traced runs, and any other
stage is skipped. Skipping leaves the program as it started, so the fallback is worth keeping only
if the program it produces beats the start on questions never used for selection.

For each BBH task this script first counts the passing runs of each two-stage pipeline of
``examples/pipelines.py`` on the train split (a cheap screen); where 1 to ``needed - 1`` runs pass
(the fallback's case), it compiles the pipeline and scores start (= what skipping gives) and result
on the test split. Prints a Markdown table; ``--out`` writes the rows as JSON; runs resume from
``--run-root``.

    python benchmarks/studies/stage_fallback.py [--tasks temporal_sequences,penguins_in_a_table]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
import time
from pathlib import Path

import dspy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common.py
from common import load_bbh

import dspy_greater
from dspy_greater import ForcedExtractionAdapter, GReaTer, stats
from dspy_greater.lm import local_lm
from dspy_greater.search import GreaterConfig

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("pipelines", ROOT / "examples" / "pipelines.py")
pipelines = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pipelines)


def run_one(task: str, name: str, args: argparse.Namespace) -> dict:
    examples = load_bbh(task)
    splits = dspy_greater.split(examples, train=args.train, dev=args.dev, seed=args.seed)
    test = splits.test[: args.test]
    program = pipelines.PIPELINES[name](pipelines.answer_type(examples))
    passing = round(stats.accuracy(program, splits.train) * len(splits.train))
    row = {
        "task": task,
        "pipeline": name,
        "train": len(splits.train),
        "passing": passing,
        "needed": args.needed,
    }
    if not 0 < passing < args.needed:
        logging.info(
            "%s/%s: %d of %d runs pass; not the fallback's case",
            task,
            name,
            passing,
            len(splits.train),
        )
        return row
    run_dir = Path(args.run_root) / task / name
    started = time.perf_counter()
    optimizer = GReaTer(
        metric=dspy_greater.bbh_metric,
        auto="light",
        steps=args.steps,
        seed=args.seed,
        validate_every_step=False,
    )
    compiled = optimizer.compile(
        program,
        trainset=splits.train,
        valset=splits.dev,
        run_dir=run_dir,
        resume=(run_dir / "run.json").exists(),
    )
    seconds = time.perf_counter() - started
    row.update(
        test_size=len(test),
        majority=stats.majority_class_rate(test),
        test_start=stats.accuracy(program, test),
        test_result=stats.accuracy(compiled, test),
        compile_seconds=seconds,
        stages=[
            {
                "predictor": s.predictor,
                "targets": s.targets,
                "examples": s.examples,
                "skipped": s.skipped,
                "start": s.start_instructions,
                "instructions": s.instructions,
                "validation": [
                    s.validation.get(s.start_instructions),
                    s.validation.get(s.instructions),
                ],
            }
            for s in compiled.greater_run.stages
        ],
    )
    return row


def table(rows: list[dict]) -> str:
    se = stats.standard_error
    lines = [
        "| task | pipeline | passing on train | last stage | test: start (= skip) | "
        "test: label fallback | majority | compile (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if "test_start" not in r:
            lines.append(
                f"| {r['task']} | {r['pipeline']} | {r['passing']} of {r['train']} | "
                "(not compiled) | | | | |"
            )
            continue
        n, last = r["test_size"], r["stages"][-1]
        lines.append(
            f"| {r['task']} | {r['pipeline']} | {r['passing']} of {r['train']} | "
            f"{last['examples']} {last['targets']}: {last['instructions']!r} | "
            f"{r['test_start']:.3f} ± {se(r['test_start'], n):.3f} | "
            f"{r['test_result']:.3f} ± {se(r['test_result'], n):.3f} | {r['majority']:.3f} | "
            f"{r['compile_seconds']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tasks",
        default="temporal_sequences,logical_deduction_three_objects,"
        "penguins_in_a_table,disambiguation_qa,geometric_shapes",
        help="comma-separated BBH tasks (../shared/data/bbh or shipped)",
    )
    parser.add_argument("--pipelines", default=",".join(pipelines.PIPELINES))
    parser.add_argument("--steps", type=int, default=4, help="GReaTer steps per stage")
    parser.add_argument("--train", type=int, default=12)
    parser.add_argument("--dev", type=int, default=16)
    parser.add_argument("--test", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-compiles",
        type=int,
        default=3,
        help="stop after this many compiled cells (each takes ~10 min)",
    )
    parser.add_argument("--run-root", default="benchmarks/runs/fallback")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    args.needed = max(2, GreaterConfig.budget("light").subset_size)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("dspy", "vllm", "httpx", "LiteLLM"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    dspy.configure(lm=local_lm(max_tokens=128), adapter=ForcedExtractionAdapter())
    rows: list[dict] = []
    for task in args.tasks.split(","):
        for name in args.pipelines.split(","):
            if sum("test_start" in r for r in rows) >= args.max_compiles:
                break
            rows.append(run_one(task, name, args))
            logging.info("done: %s", rows[-1])
            if args.out:
                Path(args.out).write_text(
                    json.dumps({"args": vars(args), "rows": rows}, indent=1, default=str)
                )
    print(table(rows))


if __name__ == "__main__":  # vLLM starts worker processes with spawn: keep this guard
    main()
