"""dspy-greater: GReaTer prompt optimization (gradients over reasoning) for DSPy.

Importing the package is cheap: torch, transformers and vllm load only when an engine is built.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import _moved

__version__ = "0.1.0"

# Public name -> module that defines it; loaded on first access (PEP 562).
_LAZY = {
    "default_model": "models",
    "embedded_model": "models",
    "resolve_model": "models",
    "cache_dir": "models",
    "load_bbh": "data",
    "split": "data",
    "bbh_metric": "data",
    "bbh_answer_matches": "data",
    "bbh_program": "data",
    "closed_labels": "data",
    "majority_class_rate": "data",
    "standard_error": "data",
    "paired_change": "data",
    "PairedChange": "data",
    "accuracy": "data",
    "shipped_bbh_tasks": "data",
    "Task": "loaders",
    "load_task": "loaders",
    "load_gsm8k": "loaders",
    "load_folio": "loaders",
    "gsm8k_metric": "loaders",
    "folio_metric": "loaders",
    "GreaterError": "errors",
    "EvaluationFailed": "errors",
    "ForcedExtractionAdapter": "adapter",
    "AdapterRenderer": "renderers",
    "ChatTemplateRenderer": "renderers",
    "GReaTer": "teleprompter",
    "GReaTerRun": "report",
    "StageRun": "report",
    "GreaterConfig": "search",
    "run_greater": "search",
    "PAPER_PROMPT": "search",
    "local_lm": "lm",
}

__all__ = [  # noqa: RUF022 (grouped by module, as _LAZY)
    "__version__",
    "default_model",
    "embedded_model",
    "resolve_model",
    "cache_dir",
    "load_bbh",
    "split",
    "bbh_metric",
    "bbh_answer_matches",
    "bbh_program",
    "closed_labels",
    "majority_class_rate",
    "standard_error",
    "paired_change",
    "PairedChange",
    "accuracy",
    "shipped_bbh_tasks",
    "Task",
    "load_task",
    "load_gsm8k",
    "load_folio",
    "gsm8k_metric",
    "folio_metric",
    "GreaterError",
    "EvaluationFailed",
    "ForcedExtractionAdapter",
    "AdapterRenderer",
    "ChatTemplateRenderer",
    "GReaTer",
    "GReaTerRun",
    "StageRun",
    "GreaterConfig",
    "run_greater",
    "PAPER_PROMPT",
    "local_lm",
]

_moved.install()

if TYPE_CHECKING:
    from .adapter import ForcedExtractionAdapter
    from .data import (
        PairedChange,
        accuracy,
        bbh_answer_matches,
        bbh_metric,
        bbh_program,
        closed_labels,
        load_bbh,
        majority_class_rate,
        paired_change,
        shipped_bbh_tasks,
        split,
        standard_error,
    )
    from .errors import EvaluationFailed, GreaterError
    from .lm import local_lm
    from .loaders import Task, folio_metric, gsm8k_metric, load_folio, load_gsm8k, load_task
    from .models import cache_dir, default_model, embedded_model, resolve_model
    from .renderers import AdapterRenderer, ChatTemplateRenderer
    from .report import GReaTerRun, StageRun
    from .search import PAPER_PROMPT, GreaterConfig, run_greater
    from .teleprompter import GReaTer


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'dspy_greater' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value
