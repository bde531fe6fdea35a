"""Engines behind dspy-greater: reasoners (text generation) and gradient models.

Installed as ``dspy_greater.adapters``. Each engine imports its heavy library (torch, vllm)
only when it is built.
"""

from .base import Completion, Reasoner

__all__ = ["Completion", "Reasoner"]
