"""What a command shows by default: our INFO lines, the progress bars, the results and the
errors. vLLM's, torch's and DSPy's own warnings (Triton missing, NUMA binding, the engine's
shutdown, one "LM response was truncated" per chain) only with ``verbose``."""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

NOISY = ("dspy", "vllm", "httpx", "LiteLLM")


def configure_logging(verbose: bool = False) -> None:
    """Set up logging for a command (the CLI, the demo). Call it before vLLM starts: its
    worker processes read the environment set here."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # NUMA binding and the like
        os.environ.setdefault("PYTHONWARNINGS", "ignore")  # in vLLM's worker processes
        for category in (FutureWarning, DeprecationWarning, UserWarning):
            warnings.filterwarnings("ignore", category=category)
    import dspy  # noqa: F401  (DSPy sets its loggers' levels when imported: set ours after)

    for name in NOISY:
        logging.getLogger(name).setLevel(logging.WARNING if verbose else logging.ERROR)


def truncation_note(reasoner: Any, since: tuple[int, int] = (0, 0)) -> str | None:
    """One line on how many of ``reasoner``'s completions (since ``since``, a
    `generation_counts` taken earlier) stopped at their token limit; None if none did."""
    generated, truncated = generations_since(reasoner, since)
    if not truncated:
        return None
    return (
        f"{truncated} of {generated} generations stopped at their token limit (the chain "
        "of thought was cut short); raise the reasoning budget (--max-tokens) if that is "
        "often."
    )


def generation_counts(reasoner: Any) -> tuple[int, int]:
    """(completions generated, those truncated) by ``reasoner`` so far."""
    return (
        int(getattr(reasoner, "generated_sequences", 0)),
        int(getattr(reasoner, "truncated_sequences", 0)),
    )


def generations_since(reasoner: Any, since: tuple[int, int]) -> tuple[int, int]:
    """(completions generated, those truncated) by ``reasoner`` since ``since``, a
    `generation_counts` taken earlier."""
    now = generation_counts(reasoner)
    return now[0] - since[0], now[1] - since[1]
