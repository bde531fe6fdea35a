"""Do the prompts GReaTer found on one model help another? The paper says optimized prompts
transfer. For each GReaTer row of a source table (``optimizers_bbh.py``'s rows) whose prompt is
not the start, the target model answers the task's test questions with the paper's starting prompt
and with the source's prompt, through ``dspy-greater evaluate`` (the table's splits: the first 100
test questions, 128 reasoning tokens), beside what the source model itself scored.

Scoring goes through DSPy's cache (a start the target's own table already scored costs nothing);
a pair whose row is in ``--out`` is skipped.

    python benchmarks/studies/transfer.py \
        --source benchmarks/results/optimizers_qwen2.5-coder-1.5b.json \
        --model smollm2-135m [--tasks boolean_expressions,...] [--dtype float32] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common.py
from common import evaluate_test, git_commit
from optimizers_bbh import data_path


def source_rows(path: Path, tasks: set[str] | None) -> dict[str, dict[str, dict[str, Any]]]:
    """task -> optimizer -> row, for the tasks whose GReaTer row changed the prompt."""
    by_task: dict[str, dict[str, dict[str, Any]]] = {}
    for row in json.loads(path.read_text())["rows"]:
        by_task.setdefault(row["task"], {})[row["optimizer"]] = row
    from dspy_greater.search import PAPER_PROMPT

    return {
        task: rows
        for task, rows in by_task.items()
        if "greater" in rows
        and rows["greater"]["instructions"]["predict"] != PAPER_PROMPT
        and (tasks is None or task in tasks)
    }


def score(task: str, text: str, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The target model's test accuracy on ``task`` with the instructions ``text``."""
    from dspy_greater import load_task

    return evaluate_test(
        folder,
        lambda: load_task(data_path(task)).program(text),
        data_path(task),
        model=args.model,
        test=args.test,
        threads=args.threads,
        dtype=args.dtype,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="a table's rows (JSON)")
    parser.add_argument("--model", required=True, help="the target: an embedded model's name")
    parser.add_argument("--tasks", default=None, help="comma-separated (default: all)")
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--dtype", default=None, help="the target's (as its own table ran it)")
    parser.add_argument("--threads", type=int, default=48)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/transfer.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from dspy_greater.search import PAPER_PROMPT

    sources = source_rows(args.source, set(args.tasks.split(",")) if args.tasks else None)
    rows = json.loads(args.out.read_text())["rows"] if args.out.exists() else []
    done = {(r["source"], r["target"], r["task"]) for r in rows}
    root = Path("benchmarks/runs") / f"transfer-{args.model}" / args.source.stem
    for task, mine in sources.items():
        source_model = mine["greater"].get("settings", {}).get("model") or "smollm2-135m"
        if (source_model, args.model, task) in done:
            continue
        found = mine["greater"]["instructions"]["predict"]
        start = score(task, PAPER_PROMPT, root / task / "start", args)
        moved = score(task, found, root / task / "transferred", args)
        rows.append(
            {
                "task": task,
                "source": source_model,
                "target": args.model,
                "target_dtype": args.dtype,
                "instructions": found,
                "source_start": mine["none"]["test"] if "none" in mine else None,
                "source_greater": mine["greater"]["test"],
                "source_n": mine["greater"]["n"],
                "target_start": start["accuracy"],
                "target_transferred": moved["accuracy"],
                "n": start["n"],
                "majority": start["majority"],
                "seconds": start["seconds"] + moved["seconds"],
                "commit": git_commit(),
            }
        )
        args.out.write_text(json.dumps({"rows": rows}, indent=1))
    from dspy_greater.stats import standard_error

    print(
        "| task (n) | source → target | source: start → GReaTer | target: majority | start | "
        "transferred |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        before = "–" if r["source_start"] is None else f"{r['source_start']:.3f}"
        print(
            f"| {r['task']} ({r['n']}) | {r['source']} → {r['target']} | {before} → "
            f"{r['source_greater']:.3f} | {r['majority']:.3f} | "
            f"{r['target_start']:.3f} ± {standard_error(r['target_start'], r['n']):.3f} | "
            f"{r['target_transferred']:.3f} ± "
            f"{standard_error(r['target_transferred'], r['n']):.3f} |"
        )


if __name__ == "__main__":  # vLLM starts worker processes with spawn: keep this guard
    main()
