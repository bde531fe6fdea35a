"""Hugging Face ``transformers`` engines: a ``generate`` reasoner and the gradient model."""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import struct
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import DeviceUnavailable, NotEnoughMemory
from ..models import available_memory, fast_bfloat16
from .base import Completion, ExampleScore, RenderedExample, TemplateChat

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


BYTES_PER_ELEMENT = {"float32": 4, "bfloat16": 2, "float16": 2}
# Memory for a model's weights in generation, and with a backward pass through ~600 tokens
# (Qwen2.5-1.5B, 2 threads: bf16 5.2 GiB and fp32 10.3 GiB at peak, about 1.7x the weights).
GENERATION_MEMORY = 1.2
GRADIENT_MEMORY = 1.75
# bfloat16 weights computing in float32 (float32_compute.py): the float32 figure, 1.75 × 4 bytes a
# parameter, less the 2 bytes each bfloat16 weight saves: 5 bytes, in units of 2.
FLOAT32_COMPUTE_MEMORY = 2.5


def _tensor_headers(folder: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every tensor's header (dtype, shape) in a folder's safetensors files."""
    headers = []
    for file in sorted(Path(folder).glob("*.safetensors")):
        with open(file, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(size))
        headers += [tensor for name, tensor in header.items() if name != "__metadata__"]
    return headers


def parameter_count(folder: str | os.PathLike[str]) -> int | None:
    """The parameters in a folder's safetensors files, read from their headers (None where it
    has none)."""
    headers = _tensor_headers(folder)
    return sum(math.prod(tensor["shape"]) for tensor in headers) if headers else None


def stored_in_bfloat16(folder: str | os.PathLike[str]) -> bool:
    """Whether a folder's weights are all stored in bfloat16 (then float32 adds no precision)."""
    headers = _tensor_headers(folder) if Path(folder).is_dir() else []
    return bool(headers) and all(tensor["dtype"] == "BF16" for tensor in headers)


def check_memory(
    folder: str | os.PathLike[str],
    dtype: str,
    *,
    factor: float,
    what: str,
    available: int | None = None,
) -> None:
    """Refuse to load a model that the free memory cannot hold, before loading it."""
    count = parameter_count(folder)
    available = available_memory() if available is None else available
    if count is None or available is None or dtype not in BYTES_PER_ELEMENT:
        return
    need = count * BYTES_PER_ELEMENT[dtype] * factor
    if need <= available:
        return
    smaller = "load it in bfloat16 (dtype='bfloat16', CLI: --dtype bfloat16), " * (
        dtype == "float32"
    )
    raise NotEnoughMemory(
        f"{what} ({count / 1e9:.2f}B parameters in {dtype}) needs about {need / 2**30:.1f} GiB "
        f"of memory, but only {available / 2**30:.1f} GiB are available (a vLLM engine holds its "
        f"weights and KV cache): {smaller}lower VLLM_CPU_KVCACHE_SPACE, or stop other "
        "processes."
    )


def load_causal_lm(
    model: str | os.PathLike[str],
    *,
    dtype: str,
    device: str,
    memory: float = GENERATION_MEMORY,
    role: str = "The model",
) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer for inference, on ``device`` in ``dtype``; on the
    CPU, first check that ``memory`` times its weights fit in the free memory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = check_model_path(model)
    device = resolve_device(device)
    if device == "cpu" and Path(path).is_dir():
        check_memory(path, dtype, factor=memory, what=f"{role} of {path}")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if not tokenizer.chat_template:
        raise ValueError(f"The tokenizer of {path} has no chat template; use an instruct model.")
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"The tokenizer of {path} is not a fast tokenizer (offsets are needed).")
    lm: Any = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    lm = lm.to(device).eval()
    if lm.get_input_embeddings().weight.shape[0] < len(tokenizer):
        raise ValueError(
            f"The model in {path} has {lm.get_input_embeddings().weight.shape[0]} embeddings but "
            f"its tokenizer has {len(tokenizer)} tokens: model and tokenizer disagree."
        )
    return lm, tokenizer


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
    return {i for i in ids if i is not None}


def _prompt_logprobs(model: Any, ids: Sequence[int], device: str) -> list[float]:
    import torch

    with torch.no_grad():
        logits = model(input_ids=torch.tensor([list(ids)], device=device)).logits[0, :-1].float()
    targets = torch.tensor(list(ids)[1:], device=device)
    return torch.log_softmax(logits, -1).gather(1, targets[:, None])[:, 0].tolist()


class HFReasoner(TemplateChat):
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
        self.model_path = os.fspath(model)
        self.dtype, self.device = dtype, device
        self.generated_sequences = 0  # every completion this reasoner produced (for measuring)
        self.truncated_sequences = 0  # those that stopped at max_new_tokens
        self.batch_size = batch_size
        self._eos = _eos_ids(self.model, self.tokenizer)
        self._stop_criteria: dict[tuple[str, ...], Any] = {}

    def prompt_logprobs(self, ids: Sequence[int]) -> list[float]:
        return _prompt_logprobs(self.model, ids, self.device)

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


# Gradient models alive in this process, by (folder, dtype, device): a second compile, or the CLI
# after a test, reuses the loaded one instead of holding the weights twice. Weak: nothing here
# keeps a model alive once its users let go of it.
_GRADIENT_MODELS: weakref.WeakValueDictionary[tuple[str, str, str], HFGradientModel] = (
    weakref.WeakValueDictionary()
)
_GRADIENT_MODELS_LOCK = threading.Lock()


def shared_gradient_model(
    model: str | os.PathLike[str], *, dtype: str = "float32", device: str = "cpu"
) -> HFGradientModel:
    """The :class:`HFGradientModel` of ``model`` in ``dtype`` on ``device``: the one already
    loaded in this process if any is still in use, else a new one."""
    key = (os.path.realpath(model), dtype, device)
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
        self, model: str | os.PathLike[str], *, dtype: str = "float32", device: str = "cpu"
    ) -> None:
        import torch

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
        return _prompt_logprobs(self.model, ids, self.device)

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
