"""The GPU path: the same gradients on CUDA as on the CPU, vLLM's CUDA reasoner and the gradient
model as one model, one compile end to end. Each CUDA case is marked ``gpu`` (``pytest -m gpu``)
and skipped without CUDA; its CPU twin runs everywhere, so the code does not rot. The model is
made from a config with random weights (`benchmarks/paper_step.py`): nothing to download."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from paper_step import make_model_folder, questions

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, CUDA])]


@pytest.fixture(scope="module")
def random_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_folder(tmp_path_factory.mktemp("random-llama") / "model", "tiny")


def _gradients(folder: Path, device: str, dtype: str) -> torch.Tensor:
    from dspy_greater.adapters.hf_gradient import HFGradientModel
    from dspy_greater.chat_template import ChatTemplateRenderer
    from dspy_greater.search import PAPER_PROMPT, readable_tokens

    model = HFGradientModel(folder, dtype=dtype, device=device)
    renderer = ChatTemplateRenderer(model.tokenizer)
    examples = questions(4)
    prompt = renderer.encode_prompt(PAPER_PROMPT, examples[0])
    generator = torch.Generator().manual_seed(0)
    reasoning = torch.randint(0, len(model.vocab), (4, 24), generator=generator).tolist()
    rendered = [renderer.render(prompt, ex, r) for ex, r in zip(examples, reasoning, strict=True)]
    allowed = sorted(readable_tokens(model.vocab, model.special_ids))[:64]
    gradients = model.candidate_gradients(
        rendered, 2, allowed, answer_temperature=0.2, fluency_weight=0.2
    )
    return torch.tensor(gradients, dtype=torch.float64)


@pytest.mark.parametrize("device", DEVICES)
def test_bfloat16_gradients_on_the_device_match_float32_on_the_cpu(random_model, device):
    reference = _gradients(random_model, "cpu", "float32")
    on_device = _gradients(random_model, device, "bfloat16")
    cosine = torch.nn.functional.cosine_similarity(reference, on_device, dim=0)
    assert cosine > 0.98, f"cosine {cosine:.4f} between bfloat16 on {device} and float32 on cpu"


@pytest.mark.gpu
@CUDA
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")
def test_vllm_on_cuda_and_the_gradient_model_are_one_model(random_model):
    from dspy_greater.adapters.hf_gradient import HFGradientModel
    from dspy_greater.adapters.same_model import check_same_model
    from dspy_greater.adapters.vllm_engine import VLLMReasoner

    reasoner = VLLMReasoner(random_model, dtype="bfloat16")
    check_same_model(reasoner, HFGradientModel(random_model, dtype="bfloat16", device="cuda"))


@pytest.mark.gpu
@CUDA
@pytest.mark.skipif(importlib.util.find_spec("dspy") is None, reason="DSPy is not installed")
def test_one_compile_on_cuda(random_model, tmp_path):
    import dspy

    from dspy_greater import ForcedExtractionAdapter, GReaTer, local_lm
    from tests.helpers import even_questions, tiny_config

    lm = local_lm(random_model, max_tokens=8, cache=False)
    data = even_questions(9)
    with dspy.context(lm=lm, adapter=ForcedExtractionAdapter()):
        compiled = GReaTer(
            metric=lambda ex, pred, trace=None: ex.answer == pred.answer,
            config=tiny_config(num_examples=4),
            device="cuda",
            progress=False,
        ).compile(
            dspy.ChainOfThought("question -> answer"),
            trainset=data[:6],
            valset=data[6:],
            run_dir=tmp_path / "run",
        )
    assert compiled.greater_run.history
