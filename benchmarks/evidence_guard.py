"""What GReaTer's evidence guard (``min_evidence``) would have done to the optimized cells of the
side-by-side on Qwen (`optimizers_bbh.py`'s rows), from their dev scores: which changes of the
start it lets through, which it blocks, and the test change of each.

Those runs kept only each prompt's mean dev score, so the guard is applied with the unpaired
standard error of the dev difference, sqrt(SE(start)^2 + SE(result)^2), which is larger than the
paired one a run now records: the figures here block more than the guard in a run would. Needs
no engine.

    python benchmarks/evidence_guard.py [--rows ROWS.json] [--min-evidence 1]
        [--out benchmarks/results/evidence_guard_qwen.json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a source checkout

from dspy_greater.stats import PairedChange, clears, paired_change, standard_error

ROWS = Path(__file__).parent / "results" / "optimizers_qwen2.5-coder-1.5b.json"
RESCORED = Path(__file__).parent / "results" / "starts_rescored_qwen2.5-coder-1.5b.json"
DEV_SIZE = 50  # the side-by-side's protocol


def start_of(optimizer: str) -> str:
    """The start row an optimized cell began from (its ``none`` variant)."""
    for suffix in ("-after-inputs", "-bootstrap", "-dspy-start"):
        if optimizer.endswith(suffix):
            return "none" + suffix
    return "none"


def unpaired_change(start: float, result: float, n: int) -> PairedChange:
    """The dev change with the unpaired SE (the per-question dev scores are gone)."""
    error = math.hypot(standard_error(start, n), standard_error(result, n))
    return PairedChange(0, 0, n, result - start, error)


def test_scores(row: dict[str, Any], rescored: dict[tuple[str, str], list[float]]) -> Any:
    return row.get("test_scores") or rescored.get((row["task"], row["optimizer"]))


def analyse(rows: list[dict[str, Any]], rescored: dict, min_evidence: float) -> list[dict]:
    starts = {(r["task"], r["optimizer"]): r for r in rows if r["optimizer"].startswith("none")}
    cells = []
    for row in rows:
        if row["optimizer"].startswith("none") or row.get("dev_result") is None:
            continue
        start = starts[(row["task"], start_of(row["optimizer"]))]
        dev = unpaired_change(row["dev_start"], row["dev_result"], DEV_SIZE)
        changed = row["instructions"] != start["instructions"]
        before, after = test_scores(start, rescored), test_scores(row, rescored)
        test = paired_change(before, after) if before and after else None
        cells.append(
            {
                "task": row["task"],
                "optimizer": row["optimizer"],
                "changed": changed,
                "dev_change": dev.difference,
                "dev_se_unpaired": dev.standard_error,
                "guard_keeps_start": changed and not clears(dev, min_evidence),
                "test_change": row["test"] - start["test"],
                "test_paired_se": test.standard_error if test else None,
            }
        )
    return cells


def changes(cells: list[dict]) -> str:
    return ", ".join(format(c["test_change"], "+.2f") for c in cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=Path, default=ROWS)
    parser.add_argument("--min-evidence", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows = json.loads(args.rows.read_text())["rows"]
    rescored = {}
    if RESCORED.exists():
        for row in json.loads(RESCORED.read_text()).get("rows", []):
            rescored[(row["task"], row["optimizer"])] = row["test_scores"]
    cells = analyse(rows, rescored, args.min_evidence)
    print("| task | optimizer | dev change ± unpaired SE | guard | test change ± paired SE |")
    print("| --- | --- | --- | --- | --- |")
    for c in cells:
        guard = (
            "keeps the start" if c["guard_keeps_start"] else ("lets it" if c["changed"] else "—")
        )
        se = f" ± {c['test_paired_se']:.3f}" if c["test_paired_se"] is not None else ""
        print(
            f"| {c['task']} | {c['optimizer']} | {c['dev_change']:+.2f} ± "
            f"{c['dev_se_unpaired']:.3f} | {guard} | {c['test_change']:+.3f}{se} |"
        )
    print()
    for name, group in (
        ("GReaTer", [c for c in cells if c["optimizer"].startswith("greater")]),
        ("all optimizers", cells),
    ):
        changed = [c for c in group if c["changed"]]
        blocked = [c for c in changed if c["guard_keeps_start"]]
        kept = [c for c in changed if not c["guard_keeps_start"]]
        worst = min((c["test_change"] for c in group), default=0.0)
        worst_guarded = min([0.0] + [c["test_change"] for c in kept])  # blocked cells: 0 change
        mean = statistics.fmean(c["test_change"] for c in group) if group else 0.0
        mean_guarded = (
            statistics.fmean(0.0 if c["guard_keeps_start"] else c["test_change"] for c in group)
            if group
            else 0.0
        )
        print(
            f"{name}: {len(group)} cells, {len(changed)} changed the start; the guard "
            f"(min_evidence={args.min_evidence:g}, unpaired SE) blocks {len(blocked)} "
            f"(their test changes: {changes(blocked)}). "
            f"Mean test change {mean:+.3f} -> {mean_guarded:+.3f}; worst {worst:+.2f} -> "
            f"{worst_guarded:+.2f}."
        )
    if args.out:
        args.out.write_text(
            json.dumps({"min_evidence": args.min_evidence, "cells": cells}, indent=1) + "\n"
        )


if __name__ == "__main__":
    main()
