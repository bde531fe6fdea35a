"""dspy-greater: GReaTer prompt optimization (gradients over reasoning) for DSPy.

    optimizer = dspy_greater.GReaTer(metric=metric, auto="light")
    compiled = optimizer.compile(program, trainset=train, valset=val)

The names here are the user's API. Helpers live in their modules: statistics in
`dspy_greater.stats`, data in `dspy_greater.data` and `dspy_greater.loaders`, the
model backends in `dspy_greater.adapters`. Importing the package is cheap: torch,
transformers and vllm load only when an engine is built.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .logs import install_default_handler

__version__ = "0.2.0"

# Public name -> module that defines it; loaded on first access (PEP 562).
_LAZY = {
    "GReaTer": "teleprompter",
    "GReaTerRun": "report",
    "GreaterConfig": "search",
    "GreaterResult": "search",
    "run_greater": "search",
    "PAPER_PROMPT": "search",
    "local_lm": "lm",
    "ForcedExtractionAdapter": "forced_extraction",
    "default_model": "models",
    "embedded_model": "models",
    "load_bbh": "data",
    "split": "data",
    "bbh_program": "data",
    "bbh_metric": "data",
    "shipped_bbh_tasks": "data",
    "load_task": "loaders",
    "GreaterError": "errors",
    "EvaluationFailed": "errors",
    "configure_logging": "logs",
}

__all__ = [  # noqa: RUF022 (in _LAZY's order: the optimizer first)
    "__version__",
    "GReaTer",
    "GReaTerRun",
    "GreaterConfig",
    "GreaterResult",
    "run_greater",
    "PAPER_PROMPT",
    "local_lm",
    "ForcedExtractionAdapter",
    "default_model",
    "embedded_model",
    "load_bbh",
    "split",
    "bbh_program",
    "bbh_metric",
    "shipped_bbh_tasks",
    "load_task",
    "GreaterError",
    "EvaluationFailed",
    "configure_logging",
]

install_default_handler()

if TYPE_CHECKING:
    from .data import bbh_metric, bbh_program, load_bbh, shipped_bbh_tasks, split
    from .errors import EvaluationFailed, GreaterError
    from .forced_extraction import ForcedExtractionAdapter
    from .lm import local_lm
    from .loaders import load_task
    from .logs import configure_logging
    from .models import default_model, embedded_model
    from .report import GReaTerRun
    from .search import PAPER_PROMPT, GreaterConfig, GreaterResult, run_greater
    from .teleprompter import GReaTer


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'dspy_greater' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value
