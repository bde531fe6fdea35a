"""Shared fixtures: the real embedded model, and a tiny random Llama for fast mechanics tests."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# DSPy's disk cache, new for every test session (read when dspy is first imported, so before any
# test module): a test must not pass or fail on what an earlier session left in ~/.dspy_cache.
_CACHE = tempfile.mkdtemp(prefix="dspy-greater-tests-cache-")
os.environ["DSPY_CACHEDIR"] = _CACHE


# vLLM's KV cache for every engine of the session and its subprocesses: 1 GiB holds the tests'
# short prompts, and what it spares lets Qwen's gradient model (float32 arithmetic without AVX-512)
# load beside the session's SmolLM2 engine and Qwen's own. A user's setting is kept.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_CACHE, ignore_errors=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Qwen's tests first, while the memory is free: its vLLM engine and gradient model need
    most of a 24 GB machine (on a CPU without AVX-512, a float32 engine and a gradient model the
    loader's check puts at 8.3 GiB), more than the session's SmolLM2 engine and what earlier
    tests leave in this process allow (CI once found 10.3 GiB free for an 11.6 GiB check)."""
    items.sort(key=lambda item: item.path.name != "test_qwen.py")  # stable: the rest keep order


# The benchmark data beside the checkout (as CI lays it out), or at DSPY_GREATER_SHARED_DATA.
SHARED_DATA = Path(
    os.environ.get("DSPY_GREATER_SHARED_DATA")
    or Path(__file__).resolve().parents[2] / "shared" / "data"
)


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The embedded SmolLM2-135M-Instruct as a Hugging Face folder (converted once, cached)."""
    import dspy_greater

    return dspy_greater.default_model()


@pytest.fixture(scope="session")
def tiny_model(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2-layer Llama with SmolLM2's tokenizer and chat template.

    Same vocabulary as SmolLM2, so it passes a token-ids-only "same model" check: use it where
    the weights do not matter, or to test that such a check also compares log-probabilities.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def vllm_reasoner(smollm2: Path):
    """The offline vLLM reasoner on the embedded model (one engine for the whole session)."""
    from dspy_greater.adapters.vllm_engine import VLLMReasoner

    reasoner = VLLMReasoner(smollm2, dtype="float32", max_model_len=2048, log_stats=True)
    yield reasoner
    reasoner.close()  # now, not at exit after pytest closed its streams


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The benchmark data folder (bbh/, gsm8k/, folio/); tests and benchmarks only."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"benchmark data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_bbh() -> Path:
    """The benchmark copy of BIG-Bench Hard (tests and benchmarks only; users have no shared/)."""
    folder = SHARED_DATA / "bbh"
    if not folder.is_dir():
        pytest.skip(f"benchmark data not found at {folder}")
    return folder


def copy_model(source: Path, destination: Path) -> Path:
    """Copy a converted model folder (cheaper than converting again)."""
    shutil.copytree(source, destination)
    return destination


def broken_copy(source: Path, destination: Path) -> Path:
    """A converted model folder with its weights cut in half: it cannot be loaded."""
    shutil.copytree(source, destination)
    weights = destination / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    return destination
