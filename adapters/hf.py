"""Hugging Face ``transformers`` engines: the fallback reasoner (``generate``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dspy_greater.errors import DeviceUnavailable

from .base import Completion, Conversation

logger = logging.getLogger(__name__)


def resolve_device(device: str) -> str:
    """Check that ``device`` exists here; raise a clear error for a missing GPU."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceUnavailable(
            f"device={device!r} was requested but torch sees no CUDA GPU on this machine "
            f"(torch {torch.__version__}). Use device='cpu', or install a CUDA build of torch."
        )
    return device


def check_model_path(model: str | os.PathLike[str]) -> str:
    """Fail early on a local path that does not exist (transformers would try the Hub)."""
    text = os.fspath(model)
    looks_local = os.sep in text or text.startswith(".") or Path(text).exists()
    if looks_local and not Path(text).is_dir():
        raise FileNotFoundError(
            f"No model folder at {text}. Pass a Hugging Face model folder, e.g. "
            "dspy_greater.default_model() for the embedded SmolLM2."
        )
    return text


def load_causal_lm(model: str | os.PathLike[str], *, dtype: str, device: str) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer for inference, on ``device`` in ``dtype``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = check_model_path(model)
    device = resolve_device(device)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if not tokenizer.chat_template:
        raise ValueError(f"The tokenizer of {path} has no chat template; use an instruct model.")
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(device).eval()
    return lm, tokenizer


class HFReasoner:
    """Greedy batched generation with ``transformers``' ``generate`` (left padding)."""

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        dtype: str = "float32",
        device: str = "cpu",
        batch_size: int = 8,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.model, self.tokenizer = load_causal_lm(model, dtype=dtype, device=device)
        self.device = device
        self.batch_size = batch_size

    def chat(
        self,
        conversations: Sequence[Conversation],
        *,
        max_new_tokens: int,
        stop: Sequence[str] = (),
        continue_final_message: bool = False,
    ) -> list[Completion]:
        """Complete each conversation greedily; see :class:`adapters.base.Reasoner`."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
        prompts = [
            self.tokenizer.apply_chat_template(
                list(conv),
                tokenize=False,
                add_generation_prompt=not continue_final_message,
                continue_final_message=continue_final_message,
            )
            for conv in conversations
        ]
        completions: list[Completion] = []
        for start in range(0, len(prompts), self.batch_size):
            batch = prompts[start : start + self.batch_size]
            completions.extend(self._generate(batch, max_new_tokens, list(stop)))
        return completions

    def _generate(self, prompts: list[str], max_new_tokens: int, stop: list[str]) -> list[Completion]:
        import torch

        tok = self.tokenizer
        # The chat template already wrote the special tokens; don't add a second BOS.
        inputs = tok(prompts, return_tensors="pt", padding=True, padding_side="left",
                     add_special_tokens=False).to(self.device)
        with torch.inference_mode():
            output = self.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                stop_strings=stop or None,
                tokenizer=tok if stop else None,
            )
        new_tokens = output[:, inputs["input_ids"].shape[1] :].tolist()
        return [self._completion(ids, max_new_tokens, stop) for ids in new_tokens]

    def _completion(self, ids: list[int], max_new_tokens: int, stop: list[str]) -> Completion:
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.eos_token_id}
        cut = next((i for i, t in enumerate(ids) if t in eos_ids), None)
        ids = ids[:cut] if cut is not None else ids
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        hit = [text.index(s) for s in stop if s in text]
        if hit:
            text = text[: min(hit)]
        finished = cut is not None or bool(hit) or len(ids) < max_new_tokens
        return Completion(text=text, token_ids=tuple(ids), finish_reason="stop" if finished else "length")
