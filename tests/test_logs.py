"""What a Python script shows by default: dspy_greater's INFO lines once, the engines' only when
asked for."""

from __future__ import annotations

import os
import subprocess
import sys

SAY = "import logging; logging.getLogger('dspy_greater.teleprompter').info('run directory: R')\n"


def _run(code: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter, without the logging settings of this one's environment."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "TORCH_CPP"))}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=environment
    )


def _stderr(code: str) -> str:
    return _run(code).stderr


def test_a_script_sees_our_info_lines_without_configuring_logging():
    assert _stderr("import dspy_greater\n" + SAY) == (
        "INFO dspy_greater.teleprompter: run directory: R\n"
    )


def test_a_script_that_configures_logging_sees_each_line_once():
    code = "import logging, dspy_greater\nlogging.basicConfig(format='%(message)s')\n" + SAY
    assert _stderr(code) == "run directory: R\n"


def test_the_engines_own_lines_stay_off_unless_asked_for():
    code = (
        "import os, dspy_greater\n"
        "from dspy_greater.adapters.vllm_engine import vllm_available\n"
        "{before}"
        "vllm_available()\n"
        "print(os.environ['VLLM_LOGGING_LEVEL'], os.environ.get('TORCH_CPP_LOG_LEVEL'))\n"
    )
    quiet = _run(code.format(before=""))
    assert quiet.stdout.split() == ["ERROR", "ERROR"]
    assert "INFO" not in quiet.stdout + quiet.stderr
    verbose = _run(code.format(before="dspy_greater.configure_logging(verbose=True)\n"))
    assert verbose.stdout.split() == ["INFO", "WARNING"]


SCRIPT = """
import dspy
import dspy_greater
from dspy_greater import ForcedExtractionAdapter, GReaTer

if __name__ == "__main__":
    dspy.configure(lm=dspy_greater.local_lm(max_tokens=32), adapter=ForcedExtractionAdapter())
    examples = dspy_greater.load_bbh("causal_judgement")
    splits = dspy_greater.split(examples, train=4, dev=4, seed=0)
    program = dspy_greater.bbh_program(examples, "Answer the question.")
    optimizer = GReaTer(metric=dspy_greater.bbh_metric, auto="light", steps=1)
    compiled = optimizer.compile(program, trainset=splits.train, valset=splits.dev)
    print(compiled.greater_run)
"""


def test_the_quick_start_as_a_script_shows_our_lines_and_no_engine_lines(tmp_path):
    """The quick start's shape on vLLM, one step: the run directory, the chosen prompt and its
    validation score; none of vLLM's, Triton's, torch's or transformers' lines or bars."""
    script = tmp_path / "optimize.py"
    script.write_text(SCRIPT)
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "TORCH_CPP"))}
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=environment,
        cwd=tmp_path,
        timeout=600,
    )
    said = done.stdout + done.stderr
    assert done.returncode == 0, said[-3000:]
    assert "GReaTer run directory:" in done.stderr
    assert "GReaTer predict (round 0): 'Answer the question.' -> " in done.stderr
    assert "validation " in done.stderr and "(n=4)" in done.stderr
    assert done.stdout.startswith("GReaTerRun ("), done.stdout
    assert "  predict: 'Answer the question.' -> " in done.stdout
    for noise in ("(EngineCore", "(Worker", "(MainProcess", "Triton", "Warning", "Loading"):
        assert noise not in said, f"{noise!r} in:\n{said[-3000:]}"
