"""The gradient model on ``transformers``: proposals, one-hot gradients and exact scores at a
prompt slot."""

from __future__ import annotations

import copy
import math
import os
import threading
import weakref
from collections.abc import Sequence
from typing import Any

from .base import ExampleScore, RenderedExample
from .hardware import fast_bfloat16
from .hf_loading import (
    FLOAT32_COMPUTE_MEMORY,
    GRADIENT_MEMORY,
    load_causal_lm,
    prompt_logprobs,
    resolve_device,
    stored_in_bfloat16,
)

# Gradient models alive in this process, by (folder, dtype, device): a second compile, or the CLI
# after a test, reuses the loaded one instead of holding the weights twice. Weak: nothing here
# keeps a model alive once its users let go of it.
_GRADIENT_MODELS: weakref.WeakValueDictionary[tuple[str, str, str], HFGradientModel] = (
    weakref.WeakValueDictionary()
)
_GRADIENT_MODELS_LOCK = threading.Lock()


def shared_gradient_model(
    model: str | os.PathLike[str], *, dtype: str = "float32", device: str = "auto"
) -> HFGradientModel:
    """The `HFGradientModel` of ``model`` in ``dtype`` on ``device``: the one already
    loaded in this process if any is still in use, else a new one."""
    key = (os.path.realpath(model), dtype, resolve_device(device))
    with _GRADIENT_MODELS_LOCK:
        found = _GRADIENT_MODELS.get(key)
        if found is None:
            found = HFGradientModel(model, dtype=dtype, device=device)
            _GRADIENT_MODELS[key] = found
        return found


class HFGradientModel:
    """One-hot gradients, proposals and exact scores at a prompt slot, on ``transformers``.

    Work is per example, and cheap where it can be: the context before the optimized position is
    run once without gradient and reused as the KV cache, and the vocabulary projection is applied
    only at the positions the loss reads (the prompt's and the answer's), never everywhere.
    """

    def __init__(
        self, model: str | os.PathLike[str], *, dtype: str = "float32", device: str = "auto"
    ) -> None:
        import torch

        device = resolve_device(device)
        # bfloat16 weights with float32 arithmetic: for float32 of weights stored in bfloat16 (the
        # same numbers in half the memory), and for bfloat16 where it is slow (no AVX-512).
        upcast = device == "cpu" and (
            (dtype == "float32" and stored_in_bfloat16(model))
            or (dtype == "bfloat16" and not fast_bfloat16())
        )
        self.model, self.tokenizer = load_causal_lm(
            model,
            dtype="bfloat16" if upcast else dtype,
            device=device,
            memory=FLOAT32_COMPUTE_MEMORY if upcast else GRADIENT_MEMORY,
            role="The gradient model",
        )
        self.model_path = os.fspath(model)
        self.model.requires_grad_(False)
        if upcast:
            from .float32_compute import compute_in_float32

            compute_in_float32(self.model)
        self.device = device
        self._torch = torch
        self._embeddings = self.model.get_input_embeddings().weight
        self._backbone = self.model.get_decoder()
        self._lm_head = self.model.get_output_embeddings()
        self._softcap = getattr(self.model.config, "final_logit_softcapping", None)
        vocab_size = self._embeddings.shape[0]
        self._vocab = [self.tokenizer.decode([i]) for i in range(vocab_size)]
        self._special = frozenset(self.tokenizer.all_special_ids)
        self._last_prefix: tuple[tuple[int, ...], Any, Any] | None = None  # (ids, hidden, cache)

    @property
    def vocab(self) -> Sequence[str]:
        return self._vocab

    @property
    def special_ids(self) -> frozenset[int]:
        return self._special

    # -- pieces ------------------------------------------------------------------------------
    def _logits(self, hidden: Any) -> Any:
        """Vocabulary logits (fp32) for a [n, d] block of final hidden states."""
        logits = self._lm_head(hidden.reshape(-1, hidden.shape[-1]).contiguous())
        if logits.dtype != self._torch.float64:  # half precision is too coarse for the loss
            logits = logits.float()
        if self._softcap:
            logits = self._torch.tanh(logits / self._softcap) * self._softcap
        return logits

    def _run(self, ids: Sequence[int], *, embeds: Any = None, past: Any = None) -> tuple[Any, Any]:
        torch = self._torch
        if embeds is None:
            out = self._backbone(
                input_ids=torch.tensor([list(ids)], device=self.device),
                past_key_values=past,
                use_cache=True,
            )
        else:
            out = self._backbone(inputs_embeds=embeds[None], past_key_values=past, use_cache=True)
        return out.last_hidden_state[0], out.past_key_values

    def _prefix(self, example: RenderedExample, position: int) -> tuple[Any, Any, int]:
        """Run the ids before prompt ``position`` without gradient: (hidden, cache, position).

        The last prefix run is kept: with the instructions in the system message, every
        example shares the context before the slot, so a step runs it once, not once per
        example. The cache is the kept one: a caller that runs on from it must copy it first
        (running on extends it in place)."""
        at = example.slot.start + position
        # position == slot length asks about the token that would follow the prompt.
        if not 0 <= position <= example.slot.stop - example.slot.start:
            raise IndexError(f"prompt position {position} is outside the slot {example.slot}.")
        if at < 1:
            raise ValueError(
                "The prompt slot must not start the sequence (nothing to condition on)."
            )
        ids = tuple(example.ids[:at])
        last = self._last_prefix  # read once: another thread may replace it
        if last is None or last[0] != ids:
            with self._torch.no_grad():
                last = (ids, *self._run(ids))
            self._last_prefix = last
        _, hidden, cache = last
        return hidden, cache, at

    # -- the protocol ---------------------------------------------------------------------
    def ranked_next_tokens(
        self,
        examples: Sequence[RenderedExample],
        position: int,
        *,
        allowed: frozenset[int] | None,
        limit: int,
    ) -> list[list[int]]:
        torch = self._torch
        mask = None
        if allowed is not None:
            mask = torch.full((len(self._vocab),), float("-inf"), device=self.device)
            mask[torch.tensor(sorted(allowed), dtype=torch.long, device=self.device)] = 0.0
        ranked = []
        for example in examples:
            hidden, _, _ = self._prefix(example, position)
            with torch.no_grad():
                logits = self._logits(hidden[-1:])[0, : len(self._vocab)]
            if mask is not None:
                logits = logits + mask
            k = min(limit, len(allowed) if allowed is not None else len(self._vocab))
            ranked.append(torch.topk(logits, k).indices.tolist())
        return ranked

    def relaxed_loss(
        self,
        example: RenderedExample,
        position: int,
        candidates: Sequence[int],
        weights: Any,
        *,
        answer_temperature: float,
        fluency_weight: float,
    ) -> Any:
        """The loss of one example with the slot ``position`` embedded as ``weights @ E[cands]``."""
        torch = self._torch
        hidden_prefix, cache, at = self._prefix(example, position)
        cache = copy.deepcopy(cache)
        cand = torch.tensor(list(candidates), dtype=torch.long, device=self.device)
        rest = torch.tensor(example.ids[at:], dtype=torch.long, device=self.device)
        embeds = self._embeddings[rest].clone()
        embeds[0] = weights.to(self._embeddings.dtype) @ self._embeddings[cand]
        hidden_rest, _ = self._run((), embeds=embeds, past=cache)

        def hidden_before(absolute: range) -> Any:
            # State predicting token t is the one at t - 1: from the prefix or the relaxed run.
            rows = [
                hidden_prefix[t - 1] if t - 1 < at else hidden_rest[t - 1 - at] for t in absolute
            ]
            return torch.stack(rows)

        answer = range(example.answer.start, example.answer.stop)
        answer_logits = self._logits(hidden_before(answer))
        gold = torch.tensor(example.answer_ids, device=self.device)
        answer_ce = torch.nn.functional.cross_entropy(answer_logits / answer_temperature, gold)

        slot = range(example.slot.start, example.slot.stop)
        prompt_logprobs = torch.log_softmax(self._logits(hidden_before(slot)), dim=-1)
        nll = []
        for row, t in enumerate(slot):
            if t == at:  # the relaxed token itself: expected NLL under the one-hot weights
                nll.append(-(prompt_logprobs[row, cand] * weights.to(prompt_logprobs.dtype)).sum())
            else:
                nll.append(-prompt_logprobs[row, example.ids[t]])
        return answer_ce + fluency_weight * torch.stack(nll).mean()

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
        total = torch.zeros(len(candidates), dtype=torch.float64)
        for index, example in enumerate(examples):
            current = example.prompt_ids[position]
            if current not in candidates:
                raise ValueError(f"The current token {current} must be among the candidates.")
            weights = torch.zeros(len(candidates), dtype=self._embeddings.dtype, device=self.device)
            weights[list(candidates).index(current)] = 1.0
            weights.requires_grad_(True)
            loss = self.relaxed_loss(
                example,
                position,
                candidates,
                weights,
                answer_temperature=answer_temperature,
                fluency_weight=fluency_weight,
            )
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"The loss of example {index} is {loss.item()} (not finite). Try dtype="
                    "'float32', or check that example's answer and reasoning."
                )
            (grad,) = torch.autograd.grad(loss, weights)
            total += grad.double().cpu()
        return total.tolist()

    def prompt_logprobs(self, ids: Sequence[int]) -> list[float]:
        return prompt_logprobs(self.model, ids, self.device)

    def _logprobs_at(
        self, hidden: Any, ids: Sequence[int], positions: Sequence[int]
    ) -> tuple[Any, Any]:
        """The log-probabilities that predict ``ids[t]`` for each ``t`` in ``positions`` (from
        the hidden states of a forward over ``ids``), and those target ids."""
        torch = self._torch
        rows = torch.tensor([t - 1 for t in positions], device=self.device)
        targets = torch.tensor([ids[t] for t in positions], device=self.device)
        return torch.log_softmax(self._logits(hidden[rows]), dim=-1), targets

    def prompt_nll(self, examples: Sequence[RenderedExample]) -> float:
        """The prompt tokens' mean NLL given what precedes them, averaged over ``examples`` (a
        forward over each context up to the slot's end only)."""
        nlls = []
        for example in examples:
            with self._torch.no_grad():
                hidden, _ = self._run(example.ids[: example.slot.stop])
                slot = range(example.slot.start, example.slot.stop)
                logprobs, targets = self._logprobs_at(hidden, example.ids, slot)
                nlls.append(-float(logprobs.gather(1, targets[:, None]).mean()))
        return sum(nlls) / len(nlls)

    def score(self, examples: Sequence[RenderedExample]) -> list[ExampleScore]:
        torch = self._torch
        scores = []
        for example in examples:
            with torch.no_grad():
                hidden, _ = self._run(example.ids)
                slot = range(example.slot.start, example.slot.stop)
                answer = range(example.answer.start, example.answer.stop)
                logprobs, targets = self._logprobs_at(hidden, example.ids, [*slot, *answer])
                nll = -logprobs.gather(1, targets[:, None])[:, 0]
                n_slot = len(slot)
                correct = bool((logprobs[n_slot:].argmax(-1) == targets[n_slot:]).all())
            scores.append(
                ExampleScore(
                    correct=correct,
                    answer_loss=float(nll[n_slot:].mean()),
                    prompt_nll=float(nll[:n_slot].mean()),
                )
            )
            if not math.isfinite(scores[-1].answer_loss):
                raise FloatingPointError(
                    f"The answer loss of example {len(scores) - 1} is not finite."
                )
        return scores
