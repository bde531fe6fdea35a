"""``transformers``' ``generate`` as a reasoner: the fallback where vLLM is not installed."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from .base import Completion, TemplateChat
from .hf_loading import load_causal_lm, model_context_length, prompt_logprobs, resolve_device


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
    return {i for i in ids if i is not None}


class HFReasoner(TemplateChat):
    """Greedy batched generation with ``transformers``' ``generate`` (left padding)."""

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        dtype: str = "float32",
        device: str = "auto",
        batch_size: int = 8,
    ) -> None:
        device = resolve_device(device)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.model, self.tokenizer = load_causal_lm(model, dtype=dtype, device=device)
        self.model_path = os.fspath(model)
        self.context_length = model_context_length(model)  # prompt and new tokens together
        self.dtype, self.device = dtype, device
        self.generated_sequences = 0  # every completion this reasoner produced (for measuring)
        self.truncated_sequences = 0  # those that stopped at max_new_tokens
        self.batch_size = batch_size
        self._eos = _eos_ids(self.model, self.tokenizer)
        self._stop_criteria: dict[tuple[str, ...], Any] = {}

    def prompt_logprobs(self, ids: Sequence[int]) -> list[float]:
        return prompt_logprobs(self.model, ids, self.device)

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: int,
        stop: Sequence[str] = (),
        temperature: float = 0.0,
    ) -> list[Completion]:
        """Continue each token-id prompt, in batches of ``batch_size``: greedily, or sampled at
        ``temperature`` above 0."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
        completions: list[Completion] = []
        for start in range(0, len(prompts), self.batch_size):
            batch = [list(p) for p in prompts[start : start + self.batch_size]]
            completions.extend(self._generate(batch, max_new_tokens, list(stop), temperature))
        self.generated_sequences += len(prompts)
        self.truncated_sequences += sum(c.finish_reason == "length" for c in completions)
        return completions

    def _generate(
        self, prompts: list[list[int]], max_new_tokens: int, stop: list[str], temperature: float
    ) -> list[Completion]:
        import torch

        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        width = max(len(p) for p in prompts)
        input_ids = torch.tensor(
            [[pad] * (width - len(p)) + p for p in prompts], device=self.device
        )
        mask = torch.tensor(
            [[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device
        )
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=temperature > 0,
                **({"temperature": temperature, "top_k": 0} if temperature > 0 else {}),
                pad_token_id=pad,
                stopping_criteria=self._stopping(tuple(stop)),
            )
        return [self._completion(ids, max_new_tokens, stop) for ids in output[:, width:].tolist()]

    def _stopping(self, stop: tuple[str, ...]) -> Any:
        """Criteria that end a sequence at any of ``stop``, built once per stop list: building
        them reads and hashes the whole vocabulary, which cost more than the generation itself
        on small models when ``generate(stop_strings=...)`` did it on every call."""
        from transformers import StoppingCriteriaList, StopStringCriteria

        if not stop:
            return None
        if stop not in self._stop_criteria:
            self._stop_criteria[stop] = StoppingCriteriaList(
                [StopStringCriteria(self.tokenizer, list(stop))]
            )
        return self._stop_criteria[stop]

    def _completion(self, ids: list[int], max_new_tokens: int, stop: list[str]) -> Completion:
        cut = next((i for i, t in enumerate(ids) if t in self._eos), None)
        ids = ids[:cut] if cut is not None else ids
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        hit = [text.index(s) for s in stop if s in text]
        if hit:
            text = text[: min(hit)]
        finished = cut is not None or bool(hit) or len(ids) < max_new_tokens
        return Completion(
            text=text, token_ids=tuple(ids), finish_reason="stop" if finished else "length"
        )
