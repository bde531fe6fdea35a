"""The engines: reasoners (text generation) and gradient models, without DSPy.

``base`` holds the protocols the search builds on; ``hf`` (transformers), ``vllm_engine`` (vLLM's
offline engine) and ``vllm_server`` (vLLM's OpenAI-compatible server) are the engines, and
``same_model`` checks that a reasoner and a gradient model are one model. Each engine imports its
heavy library (torch, vllm) only when it is built.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from .base import Completion, Reasoner

__all__ = ["Completion", "Reasoner", "make_reasoner"]

logger = logging.getLogger(__name__)


def make_reasoner(
    model: str | os.PathLike[str], *, backend: str = "auto", **kwargs: Any
) -> Reasoner:
    """A local reasoner: ``"vllm"``, ``"hf"`` (transformers), or ``"auto"``: vLLM if installed."""
    from .vllm_engine import VLLMReasoner, vllm_available

    if backend == "auto":
        backend = "vllm" if vllm_available() else "hf"
        if backend == "hf":
            logger.warning(
                "vLLM is not installed: generating with transformers' generate "
                "(slower). Install dspy-greater[cpu] or [vllm] for vLLM."
            )
    if backend == "vllm":
        return VLLMReasoner(model, **kwargs)
    if backend == "hf":
        from .hf_reasoner import HFReasoner

        return HFReasoner(model, **kwargs)
    raise ValueError(f"backend must be 'auto', 'vllm' or 'hf', got {backend!r}.")
