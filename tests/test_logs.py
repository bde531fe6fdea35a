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
    quiet = subprocess.run(
        [sys.executable, "-c", code.format(before="")], capture_output=True, text=True, check=True
    )
    assert quiet.stdout.split() == ["WARNING", "ERROR"]
    assert "INFO" not in quiet.stdout + quiet.stderr
    verbose = subprocess.run(
        [
            sys.executable,
            "-c",
            code.format(before="dspy_greater.configure_logging(verbose=True)\n"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert verbose.stdout.split() == ["INFO", "WARNING"]
