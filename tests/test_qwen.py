"""The second embedded model, Qwen2.5-Coder-1.5B-Instruct, end to end on its real weights.

One module, both engines loaded once in the dtype Qwen runs in here (bfloat16; float32 without
AVX-512, the gradient model then keeping bfloat16 weights):
they agree on the weights, it generates, DSPy gets a constrained answer from it through the
forced-extraction adapter, and a gradient is taken at a slot position; the CLI optimizes (one
GReaTer step) and evaluates on it.
"""

from __future__ import annotations

import ctypes
import gc
import json
import math
import sys

import pytest

import dspy_greater
from dspy_greater.models import QWEN_CODER, registered_dtype

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def qwen_engines():
    """Qwen's vLLM reasoner and transformers gradient model, in their default dtypes."""
    from dspy_greater.adapters.hf_gradient import shared_gradient_model
    from dspy_greater.adapters.vllm_engine import VLLMReasoner

    folder = dspy_greater.embedded_model(QWEN_CODER.name)
    dtype = registered_dtype(QWEN_CODER.name)
    reasoner = VLLMReasoner(folder, dtype=dtype)  # as local_lm builds it: shared
    # As GReaTer gets it: the CLI test below reuses it rather than load the weights twice.
    gradient_model = shared_gradient_model(folder, dtype=dtype)
    engines = [reasoner, gradient_model]
    del gradient_model
    yield engines  # a list, emptied below: pytest holds what a fixture yields until after this
    reasoner.close()
    # Give the weights back to the rest of the session (the shared cache holds them weakly).
    engines.clear()
    gc.collect()
    if sys.platform == "linux":
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def test_qwen_engines_agree_generate_answer_and_give_a_gradient(qwen_engines, record_property):
    import dspy

    from dspy_greater import ForcedExtractionAdapter
    from dspy_greater.adapters.same_model import check_same_model
    from dspy_greater.chat_template import ChatTemplateRenderer
    from dspy_greater.lm import local_lm
    from dspy_greater.search import PAPER_PROMPT, readable_tokens

    reasoner, gradient_model = qwen_engines
    # The same weights: vLLM's and transformers' log-probabilities of a probe agree.
    gap = check_same_model(reasoner, gradient_model)
    record_property("same_model_gap_nats", gap)
    assert gap < 0.3

    # A short generation.
    [completion] = reasoner.chat(
        [[{"role": "user", "content": "What is 2 + 3? Reply with the number only."}]],
        max_new_tokens=8,
    )
    assert "5" in completion.text

    # One question through DSPy: reasoning, then an answer constrained to the task's labels.
    examples = dspy_greater.load_bbh("sports_understanding")
    program = dspy_greater.bbh_program(examples)
    lm = local_lm(reasoner=reasoner, max_tokens=48, cache=False)
    with dspy.context(lm=lm, adapter=ForcedExtractionAdapter()):
        prediction = program(question=examples[0].question)
    assert prediction.answer in {"yes", "no"}
    assert prediction.reasoning.strip()

    # One gradient at one slot position, over the chain the model wrote for that question.
    renderer = ChatTemplateRenderer(gradient_model.tokenizer)
    prompt = renderer.encode_prompt(PAPER_PROMPT, examples[0])
    context = renderer.render(prompt, examples[0]).context
    [chain] = reasoner.generate([context], max_new_tokens=48)
    rendered = renderer.render(prompt, examples[0], chain.token_ids)
    allowed = readable_tokens(gradient_model.vocab, gradient_model.special_ids)
    [ranked] = gradient_model.ranked_next_tokens([rendered], 1, allowed=allowed, limit=8)
    candidates = sorted({*ranked, prompt[1]})
    gradients = gradient_model.candidate_gradients(
        [rendered], 1, candidates, answer_temperature=0.2, fluency_weight=0.2
    )
    assert len(gradients) == len(candidates)
    assert all(math.isfinite(g) for g in gradients)
    assert len({round(g, 6) for g in gradients}) > 1  # the candidates are told apart


def test_the_cli_optimizes_and_evaluates_on_qwen(qwen_engines, tmp_path, capsys):
    """`optimize --model qwen2.5-coder-1.5b` (one GReaTer step, in Qwen's dtype here) and
    `evaluate --model qwen2.5-coder-1.5b`, in this process: they reuse the fixture's engine."""
    import dspy

    from dspy_greater import cli

    lm, adapter = dspy.settings.lm, dspy.settings.adapter
    run = tmp_path / "run"
    small = ["--data", "sports_understanding", "--model", QWEN_CODER.name, "--max-tokens", "32"]
    try:
        code = cli.main(
            ["optimize", *small, "--train", "2", "--dev", "2", "--test", "3", "--steps", "1"]
            + ["--run-dir", str(run), "--no-cache"]
        )
        assert code == 0, capsys.readouterr().err[-3000:]
        assert json.loads((run / "cli.json").read_text())["dtype"] == registered_dtype(
            QWEN_CODER.name
        )
        result = json.loads((run / "result.json").read_text())
        assert result["generations"] > 0
        code = cli.main(["evaluate", "--program", str(run), *small, "--split", "test"])
        assert code == 0, capsys.readouterr().err[-3000:]
    finally:
        dspy.configure(lm=lm, adapter=adapter)
    scored = json.loads((run / f"evaluate-test-{QWEN_CODER.name}.json").read_text())
    assert scored["n"] == 3 and scored["model"] == QWEN_CODER.name and scored["generations"] >= 3
