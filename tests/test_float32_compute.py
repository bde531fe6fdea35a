"""bfloat16 weights computing in float32: the gradient model where bfloat16 is slow."""

from __future__ import annotations

import dspy
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dspy_greater import models
from dspy_greater.adapters import hardware
from dspy_greater.adapters.float32_compute import Float32ComputeLinear, compute_in_float32
from dspy_greater.adapters.hf_gradient import HFGradientModel
from dspy_greater.chat_template import ChatTemplateRenderer
from dspy_greater.search import PAPER_PROMPT


@pytest.fixture
def rounded_model(tiny_model, tmp_path):
    """The tiny model's weights rounded to bfloat16, saved in float32: the exact float32
    reference for a model that stores those bfloat16 weights."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16)
    model.to(torch.float32).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(tmp_path)
    return tmp_path


def _logits_and_gradient(model, ids):
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds).logits[0, -4:].float()
    (gradient,) = torch.autograd.grad(logits.logsumexp(-1).sum(), embeds)
    return logits.detach(), gradient


def test_it_computes_what_float32_computes_on_the_same_weights(tiny_model, rounded_model):
    ids = torch.tensor([[5, 900, 17, 3000, 42, 7, 256, 1024]])
    reference = AutoModelForCausalLM.from_pretrained(rounded_model, dtype=torch.float32)
    reference.requires_grad_(False)
    upcast = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16)
    upcast.requires_grad_(False)
    plain = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16)
    plain.requires_grad_(False)
    compute_in_float32(upcast)

    linears = [m for m in upcast.modules() if isinstance(m, Float32ComputeLinear)]
    assert linears and all(m.weight.dtype == torch.bfloat16 for m in linears)
    others = [p for m in upcast.modules() if m not in linears for p in m.parameters(False)]
    assert others and all(p.dtype == torch.float32 for p in others)

    expected_logits, expected_gradient = _logits_and_gradient(reference, ids)
    logits, gradient = _logits_and_gradient(upcast, ids)
    torch.testing.assert_close(logits, expected_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gradient, expected_gradient, rtol=1e-4, atol=1e-7)
    # bfloat16 arithmetic on the same weights is visibly further off: the check can fail.
    plain_logits, _ = _logits_and_gradient(plain, ids)
    assert (plain_logits - expected_logits).abs().max() > 100 * (
        logits - expected_logits
    ).abs().max()


@pytest.fixture
def bfloat16_checkpoint(tiny_model, tmp_path):
    """The tiny model saved in bfloat16 (as the embedded Qwen is)."""
    folder = tmp_path / "bfloat16"
    AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    ("capability", "dtype", "stored", "upcast"),
    [
        ("AVX2", "bfloat16", "bfloat16", True),  # bfloat16 is slow here: float32 arithmetic
        ("AVX2", "bfloat16", "float32", True),
        ("AVX512", "bfloat16", "bfloat16", False),  # fast here: bfloat16 throughout
        ("AVX512", "float32", "bfloat16", True),  # float32 of bfloat16 weights: half the memory
        ("AVX512", "float32", "float32", False),
    ],
)
def test_the_gradient_model_computes_in_float32_from_bfloat16_weights_where_that_is_the_same(
    monkeypatch, tiny_model, bfloat16_checkpoint, rounded_model, capability, dtype, stored, upcast
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    hardware.fast_bfloat16.cache_clear()
    folder = bfloat16_checkpoint if stored == "bfloat16" else tiny_model
    try:
        model = HFGradientModel(folder, dtype=dtype)
    finally:
        hardware.fast_bfloat16.cache_clear()  # the real answer for the tests after this one
    upcast_layers = [m for m in model.model.modules() if isinstance(m, Float32ComputeLinear)]
    assert bool(upcast_layers) == upcast
    if not upcast:
        assert {p.dtype for p in model.model.parameters()} == {getattr(torch, dtype)}
        return
    # The candidate gradients are the float32 model's on the same (bfloat16) weights.
    reference = HFGradientModel(rounded_model, dtype="float32")
    renderer = ChatTemplateRenderer(model.tokenizer)
    example = dspy.Example(question="Is 7 an even number?", answer="no")
    prompt = renderer.encode_prompt(PAPER_PROMPT, example)
    rendered = [renderer.render(prompt, example, [300, 301, 302, 303, 304, 305])]
    candidates = sorted({prompt[2], 100, 2000, 3001})
    got, expected = (
        m.candidate_gradients(rendered, 2, candidates, answer_temperature=0.2, fluency_weight=0.2)
        for m in (model, reference)
    )
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_the_embedded_models_run_in_float32_where_bfloat16_is_slow(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    try:
        for capability, qwen in (
            ("AVX2", "float32"),
            ("AVX512", "bfloat16"),
            ("DEFAULT", "float32"),
        ):
            monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda c=capability: c)
            hardware.fast_bfloat16.cache_clear()
            assert models.registered_dtype("qwen2.5-coder-1.5b") == qwen, capability
            assert models.registered_dtype("smollm2-135m") == "float32"
    finally:
        hardware.fast_bfloat16.cache_clear()  # the real answer for the tests after this one
