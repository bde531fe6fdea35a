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

__all__ = ["Completion", "Reasoner", "engine_context_length", "make_reasoner"]

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

        kwargs.pop("max_model_len", None)  # vLLM's KV-cache size; transformers has none
        return HFReasoner(model, **kwargs)
    raise ValueError(f"backend must be 'auto', 'vllm' or 'hf', got {backend!r}.")


def engine_context_length(
    model: str | os.PathLike[str], *, backend: str = "auto", max_model_len: int | None = None
) -> tuple[int | None, str]:
    """The context (prompt and new tokens together) of the reasoner `make_reasoner` would
    build on ``model``, known before it starts, and what sets it: ``"max_model_len"`` (vLLM's
    engine setting) or ``"the model"`` (its position embeddings: transformers' limit)."""
    from .hf_loading import model_context_length
    from .vllm_engine import DEFAULT_MAX_MODEL_LEN, vllm_available

    if backend == "auto":
        backend = "vllm" if vllm_available() else "hf"
    if backend == "vllm":
        return max_model_len or DEFAULT_MAX_MODEL_LEN, "max_model_len"
    return model_context_length(model), "the model"
