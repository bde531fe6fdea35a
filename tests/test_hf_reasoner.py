"""The transformers fallback reasoner, on the tiny random model and the real one."""

from __future__ import annotations

import pytest

from dspy_greater.adapters.base import Reasoner
from dspy_greater.adapters.hf_reasoner import HFReasoner
from dspy_greater.errors import DeviceUnavailable, NotEnoughMemory

CONV = [{"role": "user", "content": "Name a colour."}]


def test_batched_generation_equals_one_at_a_time(tiny_model):
    reasoner = HFReasoner(tiny_model, batch_size=3)
    assert isinstance(reasoner, Reasoner)
    conversations = [
        CONV,
        [{"role": "user", "content": "A much longer question, padded left?"}],
        CONV,
    ]
    batched = reasoner.chat(conversations, max_new_tokens=6)
    single = [reasoner.chat([c], max_new_tokens=6)[0] for c in conversations]
    assert [c.token_ids for c in batched] == [c.token_ids for c in single]
    assert batched[0] == batched[2]
    assert all(len(c.token_ids) == 6 and c.finish_reason == "length" for c in batched)


def test_continue_final_message_continues_the_assistant_text(smollm2):
    reasoner = HFReasoner(smollm2)
    partial = CONV + [{"role": "assistant", "content": "My favourite colour is"}]
    prompt = reasoner.tokenizer.apply_chat_template(
        partial, tokenize=False, continue_final_message=True
    )
    assert prompt.endswith("My favourite colour is")
    [continued] = reasoner.chat([partial], max_new_tokens=4, continue_final_message=True)
    [fresh] = reasoner.chat([CONV], max_new_tokens=4)
    assert continued.token_ids != fresh.token_ids
    assert continued.text.strip()


def test_stop_strings_cut_the_text_and_end_the_generation(smollm2):
    reasoner = HFReasoner(smollm2)
    [full] = reasoner.chat([CONV], max_new_tokens=24)
    word = full.text.split()[1]
    for _ in range(2):  # the second call reuses the stop criteria the first one built
        [stopped] = reasoner.chat([CONV], max_new_tokens=24, stop=[word])
        assert word not in stopped.text
        assert full.text.startswith(stopped.text)
        assert stopped.finish_reason == "stop"
        # generation ended at the stop string, not at max_new_tokens
        assert len(stopped.token_ids) < len(full.token_ids)


def test_missing_gpu_and_missing_folder_are_named(tiny_model, tmp_path):
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailable, match="device='cpu'"):
            HFReasoner(tiny_model, device="cuda")
    with pytest.raises(FileNotFoundError, match="default_model"):
        HFReasoner(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="batch_size"):
        HFReasoner(tiny_model, batch_size=0)


def test_a_model_the_free_memory_cannot_hold_is_refused_before_loading(tiny_model):
    from transformers import AutoModelForCausalLM

    from dspy_greater.adapters.hf_loading import check_memory, parameter_count

    count = parameter_count(tiny_model)
    loaded = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert count == sum(p.numel() for p in loaded.parameters())
    need_fp32 = count * 4 * 1.75
    with pytest.raises(NotEnoughMemory, match=r"load it in bfloat16.*VLLM_CPU_KVCACHE_SPACE"):
        check_memory(tiny_model, "float32", factor=1.75, what="x", available=int(need_fp32) - 1)
    # bfloat16 needs half, and a refusal in bfloat16 does not suggest it.
    check_memory(tiny_model, "bfloat16", factor=1.75, what="x", available=int(need_fp32) - 1)
    with pytest.raises(NotEnoughMemory) as refused:
        check_memory(tiny_model, "bfloat16", factor=1.75, what="x", available=1)
    assert "bfloat16 (" not in str(refused.value)
