"""Does GReaTer's selection on a few training examples overfit? For a finished GReaTer cell of
``optimizers_bbh.py``, the start and the prompt after each step are scored on the training
examples the search selected on, on the dev split and on the test split (the cell's own splits,
model and reasoning budget), so that the gains per step can be read side by side.

Scoring goes through DSPy's cache: the start, and prompts a cell already scored, cost nothing.
A prompt whose row is in ``--out`` is skipped (resumable).

    python benchmarks/studies/greater_steps.py --cell benchmarks/runs/optimizers-MODEL/TASK/greater
        [--steps 2,4,6] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common.py
from common import cell_task, git_commit


def stage_history(cell: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The search's configuration and its step records (one predictor's stage)."""
    [stage] = sorted((cell / "greater" / "stages").glob("*/run.json"))
    run = json.loads(stage.read_text())
    return run["config"]["search"], run["state"]["history"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", type=Path, required=True, help="a GReaTer cell's run folder")
    parser.add_argument("--steps", default=None, help="comma-separated steps (default: all)")
    parser.add_argument("--threads", type=int, default=48)
    parser.add_argument("--out", type=Path, default=None, help="default: CELL/steps.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from dspy_greater.stats import accuracy

    search, history = stage_history(args.cell)
    wanted = {int(s) for s in args.steps.split(",")} if args.steps else None
    prompts = [(0, history[0]["prompt_before"], None)] + [
        (r["step"] + 1, r["prompt_after"], r["score_after"])
        for r in history
        if wanted is None or r["step"] + 1 in wanted
    ]
    out = args.out or args.cell / "steps.json"
    rows = json.loads(out.read_text())["rows"] if out.exists() else []
    done = {r["after_step"] for r in rows}
    _, task, _, _ = cell_task(args.cell)
    selection = task.splits.train[: search["num_examples"]]
    for step, text, search_score in prompts:
        if step in done:
            continue
        program = task.program(text)
        scores = {
            name: accuracy(program, examples, task.metric, num_threads=args.threads)
            for name, examples in (
                ("selection", selection),
                ("dev", task.splits.dev),
                ("test", task.splits.test),
            )
        }
        rows.append(
            {"after_step": step, "prompt": text, "search_score": search_score, **scores}
            | {"n": {"selection": len(selection), "dev": len(task.splits.dev)}}
            | {"test_n": len(task.splits.test), "commit": git_commit()}
        )
        logging.info("step %d: %s", step, scores)
        out.write_text(json.dumps({"cell": str(args.cell), "rows": rows}, indent=1))
    print("| after step | prompt | search score | selection | dev | test |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in sorted(rows, key=lambda r: r["after_step"]):
        score = "" if r["search_score"] is None else f"{r['search_score']:.3f}"
        print(
            f"| {r['after_step']} | {r['prompt']!r} | {score} | {r['selection']:.3f} | "
            f"{r['dev']:.3f} | {r['test']:.3f} |"
        )


if __name__ == "__main__":  # vLLM starts worker processes with spawn: keep this guard
    main()
