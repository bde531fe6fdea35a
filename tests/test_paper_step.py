"""`benchmarks/paper_step.py` runs (a tiny config on the CPU), where a borrowed GPU machine runs it:
without DSPy and vLLM installed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Runs the benchmark with DSPy and vLLM made unimportable, as on a machine without them.
WITHOUT_DSPY = """
import importlib.abc, runpy, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("dspy", "vllm", "litellm"):
            raise ImportError(f"{name} is not installed here")
sys.meta_path.insert(0, Block())
sys.argv = ["paper_step.py", *sys.argv[1:]]
runpy.run_path(sys.argv.pop(1), run_name="__main__")
"""


def test_a_paper_budget_step_runs_without_dspy_and_reports_every_phase(tmp_path):
    out = tmp_path / "row.json"
    command = [sys.executable, "-c", WITHOUT_DSPY, str(ROOT / "benchmarks" / "paper_step.py")]
    options = ["--size", "tiny", "--examples", "6", "--tokens", "48"]
    done = subprocess.run(
        [*command, *options, "--folder", str(tmp_path / "model"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    row = json.loads(out.read_text())
    assert row["examples"] == 6 and row["top_k"] == 40 and row["shortlist"] == 3
    assert row["mean_chain_tokens"] == 48  # no end of sequence: the full budget, an upper bound
    for phase in ("reason_s", "gradient_s", "select_s", "step_s", "reason_tokens_per_s"):
        assert row[phase] > 0, phase
    assert row["candidates"] >= 1 and row["peak_gib"] > 0
    assert "| size |" in done.stdout and "an upper bound" in done.stdout
