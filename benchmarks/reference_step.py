"""The GReaTer paper's step as its reference code computes it, for the speed benchmark only.

Same algorithm and inputs as ``dspy_greater.search`` (so one step of each is the same work), but
computed the published way: reasoning by plain ``transformers`` generation one example at a time
(no batching across examples or candidates), and the gradient and the scores from a full forward
pass over the whole sequence with full-vocabulary logits at every position, the one-hot matrix
spanning the whole prompt and the whole vocabulary. Nothing in the package uses this.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from dspy_greater.adapters.base import ExampleScore, RenderedExample
from dspy_greater.adapters.hf_gradient import HFGradientModel
from dspy_greater.adapters.hf_reasoner import HFReasoner


def unbatched_reasoner(model: str, dtype: str = "float32") -> HFReasoner:
    """HF ``generate`` one prompt at a time, as the reference loops over examples."""
    return HFReasoner(model, dtype=dtype, batch_size=1)


class FullVocabularyGradientModel(HFGradientModel):
    """One-hot gradients and scores from full forward passes with full-vocabulary logits."""

    def _full_logits(self, embeds: Any) -> Any:
        logits = self.model(inputs_embeds=embeds[None]).logits[0]  # [T, V] at every position
        return logits.float()

    def _loss(
        self,
        example: RenderedExample,
        one_hot: Any,
        *,
        answer_temperature: float,
        fluency_weight: float,
    ) -> Any:
        torch = self._torch
        ids = torch.tensor(example.ids, device=self.device)
        embeds = self._embeddings[ids].clone()
        embeds[example.slot] = one_hot.to(self._embeddings.dtype) @ self._embeddings
        logits = self._full_logits(embeds)
        answer = torch.arange(example.answer.start, example.answer.stop, device=self.device)
        answer_ce = torch.nn.functional.cross_entropy(
            logits[answer - 1] / answer_temperature, ids[answer]
        )
        slot = torch.arange(example.slot.start, example.slot.stop, device=self.device)
        fluency = torch.nn.functional.cross_entropy(logits[slot - 1], ids[slot])
        return answer_ce + fluency_weight * fluency

    def candidate_gradients(
        self,
        examples: Sequence[RenderedExample],
        position: int,
        candidates: Sequence[int],
        *,
        answer_temperature: float,
        fluency_weight: float,
    ) -> list[float]:
        torch = self._torch
        vocab = self._embeddings.shape[0]
        total = torch.zeros(vocab, dtype=torch.float64)
        for example in examples:
            prompt = torch.tensor(example.prompt_ids, device=self.device)
            one_hot = torch.nn.functional.one_hot(prompt, vocab).to(self._embeddings.dtype)
            one_hot.requires_grad_(True)
            loss = self._loss(
                example,
                one_hot,
                answer_temperature=answer_temperature,
                fluency_weight=fluency_weight,
            )
            (grad,) = torch.autograd.grad(loss, one_hot)  # [prompt length, V]
            total += grad[position].double().cpu()
        return [float(total[c]) for c in candidates]

    def score(self, examples: Sequence[RenderedExample]) -> list[ExampleScore]:
        torch = self._torch
        scores = []
        for example in examples:
            ids = torch.tensor(example.ids, device=self.device)
            with torch.no_grad():
                logprobs = torch.log_softmax(self._full_logits(self._embeddings[ids]), dim=-1)
            nll = -logprobs[torch.arange(len(ids) - 1), ids[1:]]  # token t predicted at t - 1
            answer = slice(example.answer.start - 1, example.answer.stop - 1)
            slot = slice(example.slot.start - 1, example.slot.stop - 1)
            predicted = logprobs[answer].argmax(-1)
            correct = bool((predicted == ids[example.answer]).all())
            scores.append(
                ExampleScore(
                    correct=correct,
                    answer_loss=float(nll[answer].mean()),
                    prompt_nll=float(nll[slot].mean()),
                )
            )
            if not math.isfinite(scores[-1].answer_loss):
                raise FloatingPointError("an answer loss is not finite")
        return scores
