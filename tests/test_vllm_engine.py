"""The offline vLLM reasoner on the embedded model, against HF generate; the same-model check."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import time

import pytest

from dspy_greater.adapters.base import Reasoner
from dspy_greater.adapters.hf_gradient import HFGradientModel
from dspy_greater.adapters.hf_reasoner import HFReasoner
from dspy_greater.adapters.same_model import ModelMismatch, check_same_model
from dspy_greater.adapters.vllm_engine import VLLMReasoner, apply_cpu_defaults
from dspy_greater.errors import EngineStartFailed
from tests.conftest import broken_copy

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {
            "role": "user",
            "content": 'Is the following sentence plausible? "Tom Brady scored a touchdown."\n'
            "Think step by step.",
        }
    ],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name three colours."},
    ],
    [{"role": "user", "content": "not ( True ) and ( True ) is"}],
]


def test_greedy_completions_match_hf_generate(smollm2, vllm_reasoner):
    assert isinstance(vllm_reasoner, Reasoner)
    hf = HFReasoner(smollm2, batch_size=4)
    ours = vllm_reasoner.chat(CONVERSATIONS, max_new_tokens=24)
    theirs = hf.chat(CONVERSATIONS, max_new_tokens=24)
    for a, b in zip(ours, theirs, strict=True):
        # fp32 on both sides; a divergence late in a chain can come from kernel rounding ties,
        # so compare the first 16 tokens exactly and report the rest.
        assert a.token_ids[:16] == b.token_ids[:16]
        assert a.finish_reason == b.finish_reason or len(a.token_ids) != len(b.token_ids)


def test_continuing_an_assistant_message(vllm_reasoner):
    partial = CONVERSATIONS[0] + [{"role": "assistant", "content": "The capital of France is"}]
    [continued] = vllm_reasoner.chat([partial], max_new_tokens=4, continue_final_message=True)
    assert "Paris" in continued.text
    [fresh] = vllm_reasoner.chat(CONVERSATIONS[:1], max_new_tokens=4)
    assert fresh.text.startswith("The capital")


def test_stop_strings_and_token_ids(vllm_reasoner):
    [full] = vllm_reasoner.chat(CONVERSATIONS[2:3], max_new_tokens=32)
    word = full.text.split()[1]
    [stopped] = vllm_reasoner.chat(CONVERSATIONS[2:3], max_new_tokens=32, stop=[word])
    assert word not in stopped.text and full.text.startswith(stopped.text)
    assert stopped.finish_reason == "stop"
    assert vllm_reasoner.tokenizer.eos_token_id not in full.token_ids


def test_context_overflow_names_the_prompt(vllm_reasoner):
    too_long = [[1] * (vllm_reasoner.max_model_len - 4)]
    with pytest.raises(ValueError, match="Prompt 0 has"):
        vllm_reasoner.generate(too_long, max_new_tokens=16)


def test_prefix_cache_is_used(vllm_reasoner):
    # Caching works on whole KV blocks: share a long prefix, as GReaTer's candidates do.
    shared = "Answer the question after thinking it through carefully. " * 40
    conversations = [[{"role": "system", "content": shared}, *conv[-1:]] for conv in CONVERSATIONS]
    vllm_reasoner.chat(conversations, max_new_tokens=2)
    queries, hits = vllm_reasoner.prefix_cache_counts()
    vllm_reasoner.chat(conversations, max_new_tokens=2)
    queries_after, hits_after = vllm_reasoner.prefix_cache_counts()
    # The engine is shared by the session: look at this call's lookups only.
    assert (hits_after - hits) / (queries_after - queries) > 0.5
    assert vllm_reasoner.prefix_cache_hit_rate() > 0


def test_same_model_check_accepts_one_model_and_refuses_another(smollm2, tiny_model, vllm_reasoner):
    gap = check_same_model(vllm_reasoner, HFGradientModel(smollm2))
    assert gap < 0.05
    with pytest.raises(ModelMismatch, match="not the same weights"):
        check_same_model(vllm_reasoner, HFGradientModel(tiny_model))


def test_cpu_defaults_respect_the_user(monkeypatch):
    env = {"VLLM_CPU_KVCACHE_SPACE": "7"}
    applied = apply_cpu_defaults(env)
    assert applied["VLLM_CPU_KVCACHE_SPACE"] == "7"
    assert applied["VLLM_CPU_OMP_THREADS_BIND"].startswith("0")


def test_missing_vllm_names_the_extra(monkeypatch, tiny_model, caplog):
    import sys

    from dspy_greater.adapters import make_reasoner
    from dspy_greater.adapters.vllm_engine import VLLMNotInstalled, import_vllm

    monkeypatch.setitem(sys.modules, "vllm", None)  # what Python does for a missing package
    with pytest.raises(VLLMNotInstalled, match=r"dspy-greater\[cpu\]"):
        import_vllm()
    with caplog.at_level("WARNING", logger="dspy_greater.adapters"):
        reasoner = make_reasoner(tiny_model)  # auto: falls back to transformers, and says so
    assert isinstance(reasoner, HFReasoner)
    assert any("vLLM is not installed" in r.getMessage() for r in caplog.records)


def test_an_engine_that_cannot_start_fails_fast_and_leaves_no_process(smollm2, tmp_path):
    before = set(_session_engines())
    started = time.monotonic()
    with pytest.raises(EngineStartFailed, match="did not start"):
        VLLMReasoner(broken_copy(smollm2, tmp_path / "broken"), max_model_len=512)
    assert time.monotonic() - started < 120
    assert _engines_settle_to(before)


def test_a_start_that_hangs_is_stopped(smollm2):
    """vLLM waits for its engine process without a limit; ours stops it after start_timeout."""
    before = set(_session_engines())
    started = time.monotonic()
    with pytest.raises(EngineStartFailed, match="had not started after 2 s"):
        VLLMReasoner(smollm2, max_model_len=640, start_timeout=2)  # its own engine: a new start
    assert time.monotonic() - started < 60
    assert _engines_settle_to(before)  # the half-started engine's processes are gone


# An engine whose process dies while vLLM reports the failure itself, and a watcher that is
# still killing the engine's processes when vLLM's error ends the start (CI once saw this: the
# watcher's signal came after the start had returned and ended the process, exit -10).
LATE_WATCHER = """
import multiprocessing, threading, time, types
from dspy_greater.adapters import vllm_engine

kill = vllm_engine._kill
def kill_slowly(processes):
    if threading.current_thread().name == "dspy-greater-vllm-start":
        time.sleep(2)
    kill(processes)
vllm_engine._kill = kill_slowly

class LLM:
    def __init__(self, path, **kwargs):
        engine = multiprocessing.Process(target=time.sleep, args=(1,))
        engine.start()
        while engine.exitcode is None:
            time.sleep(0.05)
        time.sleep(1)  # the watcher has seen the exit and is killing
        raise RuntimeError("Engine core initialization failed")

try:
    vllm_engine._start_engine(types.SimpleNamespace(LLM=LLM), "model", 60)
except vllm_engine.EngineStartFailed as failed:
    print("failed:", failed)
time.sleep(3)  # a signal from the watcher would come in here
print("still running")
"""


def test_a_watcher_that_is_late_cannot_end_the_process():
    done = subprocess.run(
        [sys.executable, "-c", LATE_WATCHER], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert "still running" in done.stdout
    assert "did not start (RuntimeError: Engine core initialization failed)" in done.stdout


def _session_engines() -> list[int]:
    return [p.pid for p in multiprocessing.active_children()]


def _engines_settle_to(expected: set[int], seconds: float = 60) -> bool:
    """Whether this session's engine processes come back to ``expected`` within ``seconds``: a
    killed process can take a while to be reaped on a loaded machine (CI once saw one still
    there right after the failed start returned)."""
    deadline = time.monotonic() + seconds
    while set(_session_engines()) != expected:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True
