"""The ``dspy-greater`` command line: optimize a task's prompt with GReaTer or one of DSPy's
optimizers, and evaluate a saved program (on another model, for transfer).

    dspy-greater optimize --data sports_understanding --optimizer greater --run-dir runs/su
    dspy-greater evaluate --program runs/su/program.json --split test

Exit codes: 0 done; 1 the run stopped on an error (the message says what and how to fix it);
2 a bad command line; 130 interrupted, 143 terminated (``--resume`` continues a GReaTer or GEPA
run).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from ..errors import GreaterError  # light: no torch, no DSPy, so `--help` stays fast
from ..logs import configure_logging
from .common import CliError
from .parser import build_parser
from .signals import EXIT_TERMINATED, Sigterm

__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_TERMINATED", "EXIT_USAGE", "main"]

EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130

logger = logging.getLogger(__name__)


def _command(name: str) -> Callable[[argparse.Namespace], int]:
    """The command's function, imported when it runs (``--help`` stays fast)."""
    if name == "optimize":
        from .optimize import optimize

        return optimize
    from .evaluate import evaluate

    return evaluate


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module docstring)."""
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    sigterm = Sigterm()
    try:
        with sigterm:
            return _command(args.command)(args)
    except BaseException as exc:
        if sigterm.received or isinstance(exc, KeyboardInterrupt):
            lm = sys.modules.get("dspy_greater.lm")  # not imported: no call to end
            if lm is not None:  # DSPy's threads would generate on, and Python wait for them
                lm.cancel_local_calls()
            print("\nInterrupted. Continue with the same command and --resume.", file=sys.stderr)
            return EXIT_TERMINATED if sigterm.received else EXIT_INTERRUPTED
        if not isinstance(exc, (CliError, GreaterError)):
            raise  # a bug: let its traceback show
        if args.verbose:
            logger.exception("the run stopped")
        print(f"dspy-greater: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
