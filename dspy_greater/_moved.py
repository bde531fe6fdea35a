"""Deprecated module names, kept for one release (0.2 moved them; 0.3 removes them).

``import dspy_greater.adapters.lm`` and ``from dspy_greater.extract import ...`` still work: each
old name is a module that warns once (``DeprecationWarning``) and reads its attributes from the
modules that now hold them, so ``isinstance`` sees one class.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from typing import Any

# old module -> the modules its names now live in, looked up in order
MOVED: dict[str, tuple[str, ...]] = {
    "dspy_greater.adapters": ("dspy_greater.engines",),
    "dspy_greater.adapters.base": ("dspy_greater.engines.base",),
    "dspy_greater.adapters.hf": ("dspy_greater.engines.hf",),
    "dspy_greater.adapters.vllm_engine": ("dspy_greater.engines.vllm_engine",),
    "dspy_greater.adapters.same_model": ("dspy_greater.engines.same_model",),
    "dspy_greater.adapters.lm": ("dspy_greater.lm", "dspy_greater.engines"),
    "dspy_greater.adapters.server": ("dspy_greater.lm", "dspy_greater.engines.vllm_server"),
    "dspy_greater.extract": (
        "dspy_greater.adapter",
        "dspy_greater.values",
        "dspy_greater.renderers",
    ),
    "dspy_greater.chat_template": ("dspy_greater.renderers", "dspy_greater.search"),
    "dspy_greater.traces": ("dspy_greater.bridge",),
}


class _MovedModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # the import system's own attributes are never forwarded
            raise AttributeError(name)
        for target in MOVED[self.__name__]:
            module = importlib.import_module(target)
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in MOVED:
            return None
        package = any(name.startswith(fullname + ".") for name in MOVED)
        return importlib.machinery.ModuleSpec(fullname, self, is_package=package)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return _MovedModule(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        new = " and ".join(MOVED[module.__name__])
        warnings.warn(
            f"{module.__name__} is deprecated: import from {new} (removed in dspy-greater 0.3).",
            DeprecationWarning,
            stacklevel=2,
        )


def install() -> None:
    """Let the old module names import (once per process)."""
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.append(_Finder())
