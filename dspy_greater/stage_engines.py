"""The engines behind each predictor's LM: the reasoner, the weights' folder and the gradient
model, checked to be one model."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dspy

from .adapters.base import GradientModel, Reasoner
from .adapters.hf_loading import resolve_device
from .errors import GreaterError
from .forced_extraction import ForcedExtractionAdapter
from .lm import local_reasoner
from .models import EMBEDDED_MODELS, registered_dtype, resolve_model
from .server_reasoner import ServerReasoner

logger = logging.getLogger(__name__)


@dataclass
class StageEngines:
    """What one predictor reasons and takes gradients with."""

    lm: Any
    reasoner: Reasoner
    model_folder: str  # the gradient model's folder
    gradient_model: GradientModel


def reasoner_and_folder(lm: Any, gradient_model: str | os.PathLike[str] | None) -> tuple[Any, str]:
    """The reasoner behind ``lm`` and the folder of its weights: a local engine's own (unless
    ``gradient_model`` names one), or, for a server, a reasoner through ``lm`` on the weights in
    ``gradient_model``."""
    if gradient_model is not None:
        gradient_model = resolve_model(gradient_model)  # a registered name or a folder
    reasoner = local_reasoner(lm)
    if reasoner is not None:
        path = gradient_model or getattr(reasoner, "model_path", None)
        if path is None:
            raise GreaterError(
                f"{type(reasoner).__name__} names no model folder; pass "
                "gradient_model= (the folder of the same weights)."
            )
        return reasoner, os.fspath(path)
    if gradient_model is None:
        raise GreaterError(
            f"The LM {getattr(lm, 'model', lm)!r} is not a local engine, so GReaTer cannot "
            "take gradients through it. Pass gradient_model= (a local folder of the same "
            "weights, for a vLLM server) or task_lm=local_lm(...) to optimize on a local proxy."
        )
    return ServerReasoner(lm, tokenizer=gradient_model), os.fspath(gradient_model)


def gradient_dtype(
    dtype: str | None,
    reasoner: Any,
    gradient_model: str | os.PathLike[str] | None,
    device: str = "cpu",
) -> str:
    """``dtype``, else the task engine's (the gradient then sees the weights the engine runs),
    else ``gradient_model``'s registered dtype, else bfloat16 on a GPU and float32 on the CPU.
    (A bfloat16 gradient model computes in float32 where bfloat16 is slow:
    `HFGradientModel`.)"""
    engine_dtype = getattr(reasoner, "dtype", None)
    if dtype is not None:
        return dtype
    if isinstance(engine_dtype, str) and engine_dtype in ("float32", "bfloat16", "float16"):
        return engine_dtype
    if gradient_model is not None and os.fspath(gradient_model) in EMBEDDED_MODELS:
        return registered_dtype(gradient_model)
    return "bfloat16" if device.startswith("cuda") else "float32"


def configured_adapter() -> ForcedExtractionAdapter:
    """The configured adapter when it is a `ForcedExtractionAdapter`, else one with the
    instructions in the system message (the placement a saved program carries)."""
    configured = dspy.settings.adapter
    return (
        configured if isinstance(configured, ForcedExtractionAdapter) else ForcedExtractionAdapter()
    )


def stage_engines(
    stages: Sequence[tuple[str, Any]],
    adapter: ForcedExtractionAdapter,
    *,
    task_lm: Any,
    gradient_model: str | os.PathLike[str] | None,
    dtype: str | None,
    device: str,
) -> dict[str, StageEngines]:
    """Each predictor's engines: behind ``task_lm`` (a proxy for all), else the predictor's own
    LM, else the configured one. Predictors that share an LM share its engines, and those on one
    folder and dtype its gradient model, loaded once per process (`shared_gradient_model`).
    Each reasoner is checked against its gradient model."""
    from .adapters.hf_gradient import shared_gradient_model

    lms = {name: task_lm or predictor.lm or dspy.settings.lm for name, predictor in stages}
    missing = [name for name, lm in lms.items() if lm is None]
    if missing:
        raise GreaterError(
            f"No LM for {missing}: configure one (dspy.configure(lm=local_lm())), set the "
            "predictors' lm, or pass task_lm=."
        )
    device = resolve_device(device)
    engines: dict[str, StageEngines] = {}
    for name, lm in lms.items():
        adapter.check_lm(lm)
        same_lm = [e for e in engines.values() if e.lm is lm]
        if same_lm:
            engines[name] = same_lm[0]
            continue
        reasoner, folder = reasoner_and_folder(lm, gradient_model)
        model = shared_gradient_model(
            folder, dtype=gradient_dtype(dtype, reasoner, gradient_model, device), device=device
        )
        engines[name] = StageEngines(lm, reasoner, folder, model)
        check_same_weights(engines[name])
    return engines


def check_same_weights(engines: StageEngines) -> None:
    """Refuse a reasoner that is not the gradient model's weights; say so, and go on, where the
    reasoner cannot report log-probabilities (a server)."""
    from .adapters.same_model import check_same_model

    try:
        check_same_model(engines.reasoner, engines.gradient_model)
    except NotImplementedError as exc:  # a server reports no log-probabilities; a bug raises
        logger.warning(
            "Could not check that the reasoner is the gradient model's weights "
            "(%s); check it with a local reasoner on the same folder.",
            exc,
        )
