"""Does an optimizer capture the room an instruction has? The room-capture table, the gate and the
no-harm line, from `optimizers_bbh.py`'s rows (no engine).

The room of a row is the best fixed probe's paired test gain over the start (the probes: DSPy's
default instruction and the short instruction ``brief``); a row has room where that gain is at
least 2 paired standard errors. An optimizer's share of the room is its paired test gain over
the start divided by the room. The gate (GReaTer medium): a share of at least two thirds, a gain
of at least 2 paired SE, and an accuracy that clears the majority rate by one SE.

The no-harm line takes every optimized cell of the room rows and of the side-by-side: each
optimizer's worst test change against its start; GReaTer's also with the evidence guard (the
room cells ran with it; the side-by-side's cells as `evidence_guard.py` replays it).

    python benchmarks/room.py [--rows benchmarks/results/room_qwen.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a source checkout
from evidence_guard import start_of

from dspy_greater.stats import PairedChange, clears, paired_change, standard_error

RESULTS = Path(__file__).parent / "results"
ROWS = RESULTS / "room_qwen.json"
SIDE_BY_SIDE = RESULTS / "optimizers_qwen2.5-coder-1.5b.json"
GUARD_REPLAY = RESULTS / "evidence_guard_qwen.json"
PROBES = ("none-dspy-start", "none-brief")
OPTIMIZED = ("greater-light-256", "greater-medium", "gepa-matched", "miprov2")
MIN_ROOM_SE = 2.0  # a probe's gain that marks room
GATE_SHARE, GATE_SE, GATE_MAJORITY_SE = 2 / 3, 2.0, 1.0


def change(start: dict[str, Any], row: dict[str, Any]) -> PairedChange:
    return paired_change(start["test_scores"], row["test_scores"])


def room_of(cells: dict[str, dict[str, Any]]) -> tuple[str, PairedChange] | None:
    """The best probe and its paired gain over the start (None before the probes have run)."""
    if "none" not in cells or not all(p in cells for p in PROBES):
        return None
    gains = {p: change(cells["none"], cells[p]) for p in PROBES}
    best = max(gains, key=lambda p: gains[p].difference)
    return best, gains[best]


def has_room(gain: PairedChange) -> bool:
    return clears(gain, MIN_ROOM_SE)


def gate(row: dict[str, Any], start: dict[str, Any], room: PairedChange) -> tuple[bool, str]:
    """The gate's verdict on one optimized cell, with its three numbers."""
    gain = change(start, row)
    share = gain.difference / room.difference if room.difference > 0 else 0.0
    se = standard_error(row["test"], row["n"])
    tests = {
        f"share {share:.2f} ≥ {GATE_SHARE:.2f}": share >= GATE_SHARE,
        f"gain {gain.difference:+.3f} ≥ {GATE_SE:g} paired SE ({gain.standard_error:.3f})": (
            clears(gain, GATE_SE)
        ),
        f"accuracy {row['test']:.3f} ≥ majority {row['majority']:.3f} + 1 SE ({se:.3f})": (
            row["test"] >= row["majority"] + GATE_MAJORITY_SE * se
        ),
    }
    verdict = all(tests.values())
    return verdict, "; ".join(f"{k}: {'yes' if ok else 'no'}" for k, ok in tests.items())


def _hours(row: dict[str, Any]) -> str:
    return f"{(row['seconds'] + row['test_seconds']) / 3600:.1f} h"


def room_table(rows: list[dict[str, Any]]) -> list[str]:
    by_task: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        by_task.setdefault(r["task"], {})[r["optimizer"]] = r
    lines = []
    for task, cells in by_task.items():
        start = cells.get("none")
        if start is None:
            lines.append(f"{task}: the start has not run")
            continue
        n, majority = start["n"], start["majority"]
        room = room_of(cells)
        lines += [
            f"### {task} ({n} test questions; majority {majority:.3f})",
            "",
            "| cell | test ± SE | paired change ± SE (right / wrong) | share of the room | "
            "generations | time |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for name in ("none", *PROBES, *OPTIMIZED):
            row = cells.get(name)
            if row is None:
                continue
            se = standard_error(row["test"], row["n"])
            gain = change(start, row)
            moved = (
                f"{gain.difference:+.3f} ± {gain.standard_error:.3f} (+{gain.gained} / "
                f"-{gain.lost})"
                if name != "none"
                else "—"
            )
            share = (
                f"{gain.difference / room[1].difference:.2f}"
                if room and name in OPTIMIZED and room[1].difference > 0
                else "—"
            )
            spent = f"{row['generations']:,}" if name in OPTIMIZED else "—"
            lines.append(
                f"| {name} | {row['test']:.3f} ± {se:.3f} | {moved} | {share} | {spent} | "
                f"{_hours(row)} |"
            )
        lines.append("")
        if room is None:
            lines.append("The probes have not all run: no room measured yet.")
        else:
            best, gain = room
            lines.append(
                f"Room: {best} {gain} over the start: "
                + ("room (≥ 2 paired SE)." if has_room(gain) else "no room at this budget.")
            )
            if "greater-medium" in cells and has_room(gain):
                passed, why = gate(cells["greater-medium"], start, gain)
                lines.append(f"Gate (GReaTer medium): {'PASS' if passed else 'FAIL'} — {why}.")
        lines.append("")
    return lines


def family(optimizer: str) -> str:
    return optimizer.split("-")[0]


def no_harm(rows: list[dict[str, Any]], side: list[dict[str, Any]], replay: list[dict]) -> str:
    """Each optimizer's worst test change against its start over both tables (each cell
    against its own table's start); GReaTer's with the evidence guard beside it."""
    blocked = {(c["task"], c["optimizer"]) for c in replay if c["guard_keeps_start"]}
    worst: dict[str, tuple[float, str]] = {}
    guarded = (0.0, "none")
    for table, ran_guarded in ((side, False), (rows, True)):
        starts = {(r["task"], r["optimizer"]): r for r in table if family(r["optimizer"]) == "none"}
        for r in table:
            start = starts.get((r["task"], start_of(r["optimizer"])))
            if family(r["optimizer"]) == "none" or start is None:
                continue
            cell = (r["test"] - start["test"], f"{r['task']}/{r['optimizer']}")
            name = family(r["optimizer"])
            worst[name] = min(worst.get(name, (0.0, "none")), cell)
            if name == "greater" and (ran_guarded or (r["task"], r["optimizer"]) not in blocked):
                guarded = min(guarded, cell)
    parts = [f"{name} {value:+.2f} ({cell})" for name, (value, cell) in sorted(worst.items())]
    return (
        "Worst test change against the start, every optimized cell of both tables: "
        + ", ".join(parts)
        + f"; GReaTer with the evidence guard {guarded[0]:+.2f} ({guarded[1]})."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=Path, default=ROWS)
    args = parser.parse_args()
    rows = json.loads(args.rows.read_text())["rows"]
    side = json.loads(SIDE_BY_SIDE.read_text())["rows"]
    replay = json.loads(GUARD_REPLAY.read_text())["cells"]
    print("\n".join(room_table(rows)))
    print(no_harm(rows, side, replay))


if __name__ == "__main__":
    main()
