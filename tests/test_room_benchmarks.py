"""The room question's benchmarks: `optimizers_bbh.py` sets the matched GEPA cell's budget from
GReaTer medium's generations, and `room.py` measures the room and applies the gate."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import optimizers_bbh
import room


def test_gepa_matched_takes_greater_medium_generations_on_its_own_task():
    medium = {"task": "a", "optimizer": "greater-medium", "generations": 1000}
    other = {"task": "b", "optimizer": "greater-medium", "generations": 40}
    assert optimizers_bbh.matched_options("a", "gepa-matched", []) is None
    assert optimizers_bbh.matched_options("a", "gepa-matched", [other]) is None
    assert optimizers_bbh.matched_options("a", "gepa-matched", [other, medium]) == [
        "--metric-calls",
        "500",
    ]
    assert optimizers_bbh.matched_options("a", "gepa", [medium]) == ["--metric-calls", "200"]


def _row(optimizer: str, right: int, n: int = 100) -> dict:
    scores = [1.0] * right + [0.0] * (n - right)
    return {
        "task": "t",
        "optimizer": optimizer,
        "test": right / n,
        "n": n,
        "majority": 0.33,
        "test_scores": scores,
        "seconds": 3600.0,
        "test_seconds": 0.0,
        "generations": 900,
    }


def test_the_room_is_the_best_probe_and_the_gate_needs_two_thirds_of_it():
    rows = [_row("none", 30), _row("none-dspy-start", 45), _row("none-brief", 30)]
    best, gain = room.room_of({r["optimizer"]: r for r in rows})
    assert best == "none-dspy-start" and abs(gain.difference - 0.15) < 1e-9
    assert room.has_room(gain)  # 15 turned right, none wrong: 4 paired SE
    passed, why = room.gate(_row("greater-medium", 42), rows[0], gain)  # 0.8 of the room
    assert passed, why
    passed, why = room.gate(_row("greater-medium", 35), rows[0], gain)  # a third of it
    assert not passed and "share 0.33" in why
    text = "\n".join(room.room_table([*rows, _row("greater-medium", 42)]))
    assert "Gate (GReaTer medium): PASS" in text and "| greater-medium | 0.420 ± 0.049" in text


def test_a_probe_inside_two_paired_errors_is_no_room():
    rows = [_row("none", 30), _row("none-dspy-start", 32), _row("none-brief", 31)]
    _, gain = room.room_of({r["optimizer"]: r for r in rows})
    assert not room.has_room(gain)
    assert "no room at this budget" in "\n".join(room.room_table(rows))


def test_the_screen_ranks_rows_by_the_best_probes_paired_gap():
    import room_screen

    def probe(task: str, name: str, right: int, n: int = 50) -> dict:
        scores = [1.0] * right + [0.0] * (n - right)
        return {
            "task": task,
            "probe": name,
            "n": n,
            "accuracy": right / n,
            "majority": 0.5,
            "scores": scores,
        }

    rows = [
        *(probe("flat", p, 20) for p in room_screen.PROBES),
        probe("roomy", "start", 10),
        probe("roomy", "dspy-default", 12),
        probe("roomy", "brief", 25),
        probe("half", "start", 10),  # its probes have not run
    ]
    by_task = {}
    for r in rows:
        by_task.setdefault(r["task"], {})[r["probe"]] = r
    best, gap = room_screen.best_gap(by_task["roomy"])
    assert best == "brief" and gap.gained == 15 and gap.lost == 0
    assert room_screen.best_gap(by_task["half"]) is None
    table = room_screen.summary(rows).splitlines()
    assert table[2].startswith("| roomy (50)") and table[2].endswith("| yes |")
    assert table[3].startswith("| flat (50)") and table[3].endswith("| no |")
