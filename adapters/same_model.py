"""Check that the reasoner and the gradient model are one model (same tokenizer, same weights)."""

from __future__ import annotations

import logging
from typing import Any

from ..errors import GreaterError
from .base import chat_prompt_ids

logger = logging.getLogger(__name__)

PROBE = [
    {
        "role": "user",
        "content": 'Is the following sentence plausible? "The goalie saved a penalty."',
    },
    {"role": "assistant", "content": "A goalie saves penalties in football, so the sentence is"},
]
# Mean |difference| of per-token log-probabilities (nats) still taken as the same weights:
# bf16 against fp32 of one model stays far below it, another model far above.
MAX_MEAN_LOGPROB_GAP = 0.3


class ModelMismatch(GreaterError, ValueError):
    """The reasoner and the gradient model are not the same model."""


def check_same_model(reasoner: Any, gradient_model: Any) -> float:
    """Raise `ModelMismatch` unless both engines tokenize a probe alike and give its tokens
    the same log-probabilities; return the mean log-probability gap (nats)."""
    template_a = getattr(reasoner.tokenizer, "chat_template", None)
    template_b = getattr(gradient_model.tokenizer, "chat_template", None)
    if template_a != template_b:
        raise ModelMismatch(
            "The reasoner's and the gradient model's chat templates differ; "
            "load both from the same model folder."
        )
    [ids_a] = chat_prompt_ids(reasoner.tokenizer, [PROBE], continue_final_message=True)
    [ids_b] = chat_prompt_ids(gradient_model.tokenizer, [PROBE], continue_final_message=True)
    if ids_a != ids_b:
        raise ModelMismatch(
            "The reasoner's and the gradient model's tokenizers disagree on a probe; "
            "load both from the same model folder."
        )
    if not callable(getattr(reasoner, "prompt_logprobs", None)):
        raise NotImplementedError(f"{type(reasoner).__name__} reports no log-probabilities.")
    a, b = reasoner.prompt_logprobs(ids_a), gradient_model.prompt_logprobs(ids_a)
    gap = sum(abs(x - y) for x, y in zip(a, b, strict=True)) / len(a)
    if gap > MAX_MEAN_LOGPROB_GAP:
        raise ModelMismatch(
            f"The reasoner and the gradient model give a probe's tokens log-probabilities that "
            f"differ by {gap:.2f} nats on average (allowed {MAX_MEAN_LOGPROB_GAP}): they are not "
            "the same weights. Point both at the same model."
        )
    logger.info("Reasoner and gradient model agree (mean log-prob gap %.4f nats).", gap)
    return gap
