"""Loading a ``transformers`` model safely: the device, the folder and the memory it needs."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import DeviceUnavailable, NotEnoughMemory
from .hardware import available_memory

logger = logging.getLogger(__name__)


def resolve_device(device: str) -> str:
    """``device``, checked to exist here (a clear error for a missing GPU); ``"auto"`` is CUDA
    where torch sees a GPU, else the CPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
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


def model_context_length(folder: str | os.PathLike[str]) -> int | None:
    """The longest sequence a model folder's config allows (its position embeddings), or None
    where the config does not say."""
    config_file = Path(folder) / "config.json"
    if not config_file.is_file():
        return None
    config = json.loads(config_file.read_text())
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(config.get(key), int):
            return int(config[key])
    return None


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


@contextlib.contextmanager
def _loading_bar(show: bool) -> Iterator[None]:
    """transformers' "Loading weights" bar only where asked (debug logs)."""
    from transformers.utils import logging as hf_logging

    was_shown = hf_logging.is_progress_bar_enabled()
    if was_shown and not show:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_shown and not show:
            hf_logging.enable_progress_bar()


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
    with _loading_bar(logger.isEnabledFor(logging.DEBUG)):  # a bar per load is noise
        lm: Any = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    lm = lm.to(device).eval()
    if lm.get_input_embeddings().weight.shape[0] < len(tokenizer):
        raise ValueError(
            f"The model in {path} has {lm.get_input_embeddings().weight.shape[0]} embeddings but "
            f"its tokenizer has {len(tokenizer)} tokens: model and tokenizer disagree."
        )
    return lm, tokenizer


def prompt_logprobs(model: Any, ids: Sequence[int], device: str) -> list[float]:
    """The log-probability of each token of ``ids`` after the ones before it (teacher-forced)."""
    import torch

    with torch.no_grad():
        logits = model(input_ids=torch.tensor([list(ids)], device=device)).logits[0, :-1].float()
    targets = torch.tensor(list(ids)[1:], device=device)
    return torch.log_softmax(logits, -1).gather(1, targets[:, None])[:, 0].tolist()
