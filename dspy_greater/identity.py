"""What identifies a run across processes: a resumed run must use the same metric and see the
same examples, and neither may be told apart by a memory address."""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
from collections.abc import Sequence
from typing import Any

import dspy


def metric_identity(metric: Any) -> Any:
    """What identifies a metric across processes (a resumed run must use the same one): a
    function by its module, name and code; a ``functools.partial`` by its function and
    arguments; a callable object by its class and attributes. Never a memory address."""
    if isinstance(metric, functools.partial):
        return {
            "partial": metric_identity(metric.func),
            "args": [_stable(a) for a in metric.args],
            "keywords": {k: _stable(v) for k, v in sorted(metric.keywords.items())},
        }
    if inspect.ismethod(metric):
        return {"method": metric_identity(metric.__func__), "of": _stable(metric.__self__)}
    code = getattr(metric, "__code__", None)
    if code is not None:
        return {
            "function": f"{metric.__module__}.{metric.__qualname__}",
            "code": _code_digest(code),
        }
    return {"callable": _stable(metric)}


def _stable(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON that is the same in every process for an equal value (objects inside
    objects by their type alone: an attribute may hold an LM)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_stable(item, depth) for item in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_stable(item, depth) for item in value), key=repr)
    if isinstance(value, dict):
        return {str(key): _stable(item, depth) for key, item in value.items()}
    if callable(value) and (hasattr(value, "__code__") or isinstance(value, functools.partial)):
        return metric_identity(value)
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    fields = getattr(value, "__dict__", None)
    return {kind: _stable(fields, depth + 1)} if fields is not None and depth == 0 else kind


def _code_digest(code: Any) -> str:
    """The code's bytecode, names and constants (nested code objects by their own digest)."""
    constants = [_code_digest(c) if inspect.iscode(c) else repr(_stable(c)) for c in code.co_consts]
    text = json.dumps([code.co_code.hex(), list(code.co_names), constants])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def examples_digest(examples: Sequence[dspy.Example]) -> str:
    """A digest of the examples' fields (a resumed run must see the same examples)."""
    data = json.dumps([dict(ex.items()) for ex in examples], sort_keys=True, default=str)
    return hashlib.sha256(data.encode()).hexdigest()[:16]
