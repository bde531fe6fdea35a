"""What a command shows by default: our INFO lines, the progress bars, the results and the
errors. vLLM's, torch's and DSPy's own warnings (Triton missing, NUMA binding, the engine's
shutdown, one "LM response was truncated" per chain) only with ``verbose``."""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

NOISY = ("dspy", "vllm", "httpx", "LiteLLM")
FORMAT = "%(levelname)s %(name)s: %(message)s"


class _UntilConfigured(logging.StreamHandler):  # type: ignore[type-arg]
    """Shows dspy_greater's INFO lines (the run directory, the chosen prompt, the scores) in a
    script that configured no logging, as DSPy's optimizers show theirs; silent once the root
    logger has a handler (``logging.basicConfig``, the CLI, pytest), which then shows them."""

    def emit(self, record: logging.LogRecord) -> None:
        if not logging.getLogger().handlers:
            super().emit(record)


def install_default_handler() -> None:
    """Give the ``dspy_greater`` logger its default handler and level INFO (once); keep vLLM's
    import notices off in its worker processes, which import this package first."""
    from .adapters.vllm_engine import quiet_import_notices

    quiet_import_notices()
    package = logging.getLogger("dspy_greater")
    if not any(isinstance(h, _UntilConfigured) for h in package.handlers):
        handler = _UntilConfigured()
        handler.setFormatter(logging.Formatter(FORMAT))
        package.addHandler(handler)
    if package.level == logging.NOTSET:
        package.setLevel(logging.INFO)


def configure_logging(verbose: bool = False) -> None:
    """What a run shows: dspy_greater's INFO lines, progress bars, results and errors; with
    ``verbose=True`` also vLLM's, torch's and DSPy's own lines (the CLI's ``-v``). Call it before
    the first engine starts: vLLM's worker processes read the environment set here."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=FORMAT)
    logging.getLogger("dspy_greater").setLevel(logging.DEBUG if verbose else logging.INFO)
    if verbose:
        os.environ["VLLM_LOGGING_LEVEL"] = "INFO"
        os.environ["TORCH_CPP_LOG_LEVEL"] = "WARNING"  # torch's own default
    else:
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # NUMA binding and the like
        os.environ.setdefault("PYTHONWARNINGS", "ignore")  # in vLLM's worker processes
        for category in (FutureWarning, DeprecationWarning, UserWarning):
            warnings.filterwarnings("ignore", category=category)
    import dspy  # noqa: F401  (DSPy sets its loggers' levels when imported: set ours after)

    for name in NOISY:
        logging.getLogger(name).setLevel(logging.WARNING if verbose else logging.ERROR)


def truncation_note(
    reasoner: Any, since: tuple[int, int] = (0, 0), setting: str = "--max-tokens"
) -> str | None:
    """One line on how many of ``reasoner``'s completions (since ``since``, a
    `generation_counts` taken earlier) stopped at their token limit, naming the ``setting``
    that raises it; None if none did."""
    generated, truncated = generations_since(reasoner, since)
    if not truncated:
        return None
    return (
        f"{truncated} of {generated} generations stopped at their token limit (the chain "
        f"of thought was cut short); raise the reasoning budget ({setting}) if that is often."
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
