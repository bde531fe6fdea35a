"""`benchmarks/evidence_guard.py` reads the side-by-side's rows and applies the guard's rule."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_guard_replayed_on_the_side_by_side(tmp_path):
    out = tmp_path / "guard.json"
    script = ROOT / "benchmarks" / "evidence_guard.py"
    done = subprocess.run(
        [sys.executable, str(script), "--out", str(out)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    cells = {(c["task"], c["optimizer"]): c for c in json.loads(out.read_text())["cells"]}
    # +0.14 on 50 dev questions (0.36 -> 0.50) is 1.4 unpaired SE: through
    tracking = cells[("tracking_shuffled_objects_three_objects", "greater")]
    assert tracking["changed"] and not tracking["guard_keeps_start"]
    # +0.02 (0.16 -> 0.18) is not: the start stays
    assert cells[("logical_deduction_seven_objects", "greater")]["guard_keeps_start"]
    # a cell that kept the start has nothing to guard
    assert not cells[("gsm8k", "greater")]["changed"]
    assert "GReaTer: 14 cells" in done.stdout
