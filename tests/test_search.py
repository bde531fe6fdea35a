"""The GReaTer search: its phases alone, and whole runs on the tiny and the real model."""

from __future__ import annotations

import random
from dataclasses import asdict

import pytest

import dspy_greater
from dspy_greater.adapters.hf_gradient import HFGradientModel
from dspy_greater.adapters.hf_reasoner import HFReasoner
from dspy_greater.adapters.same_model import ModelMismatch, check_same_model
from dspy_greater.chat_template import ChatTemplateRenderer
from dspy_greater.errors import DeviceUnavailable
from dspy_greater.search import (
    PAPER_PROMPT,
    GreaterConfig,
    PromptScore,
    advance,
    propose,
    readable_tokens,
    run_greater,
    select,
    shortlist_by_gradient,
)
from tests.helpers import tiny_config


def test_readable_filter_follows_the_paper():
    vocab = ["<s>", " the", "The", ".", ",", " .", "'s", "12", "Ġ", "\n", "é", "a b", " ", "!", ""]
    allowed = readable_tokens(vocab, special_ids=frozenset({0}))
    assert sorted(vocab[i] for i in allowed) == sorted([" the", "The", ".", ",", "a b", " "])


def test_propose_keeps_the_current_token_and_never_repeats_the_previous():
    ranked = [[5, 6, 7, 8, 9, 10, 11, 12]] * 5
    config = GreaterConfig(top_k=8, min_candidates=2, subset_size=5, num_subsets=2)
    candidates, k = propose(ranked, current=99, previous=6, config=config, rng=random.Random(0))
    assert 99 in candidates and 6 not in candidates
    assert set(candidates) == {5, 7, 8, 9, 10, 11, 12, 99}
    assert k == 8


def test_propose_grows_k_by_the_step_until_enough_survive():
    # Example e ranks tokens so that the top-k sets only share tokens from rank 6 on.
    ranked = [[100 * e + j for j in range(6)] + list(range(1, 30)) for e in range(5)]
    config = GreaterConfig(top_k=4, top_k_step=2, min_candidates=6, subset_size=5, num_subsets=3)
    candidates, k = propose(ranked, current=7, previous=None, config=config, rng=random.Random(0))
    # k=12 is the first k whose top-k sets share 6 tokens (ranks 6..11 -> tokens 1..6).
    assert k == 12
    assert set(candidates) == {1, 2, 3, 4, 5, 6, 7}


def test_propose_is_seeded_and_seeds_matter():
    rng = random.Random(42)
    ranked = [rng.sample(range(40), 20) for _ in range(12)]
    config = GreaterConfig(top_k=12, min_candidates=1, subset_size=3, num_subsets=2)

    def draw(seed):
        return propose(ranked, current=0, previous=None, config=config, rng=random.Random(seed))

    assert draw(1) == draw(1)
    assert len({tuple(draw(seed)[0]) for seed in range(8)}) > 1


def test_shortlist_select_and_advance():
    assert shortlist_by_gradient([4, 5, 6, 7], [0.3, -1.0, -0.2, -1.0], 3) == [5, 7, 6]
    scores = {4: PromptScore(0.5, 2.0, 0.54), 5: PromptScore(0.4, 3.0, 0.46)}
    assert select(scores) == 5
    config = GreaterConfig(max_prompt_tokens=4)
    assert advance((1, 2, 3), 0, ends_sentence=False, config=config) == (1, False)
    assert advance((1, 2, 3), 2, ends_sentence=True, config=config) == (0, False)
    assert advance((1, 2, 3), 2, ends_sentence=False, config=config) == (3, True)
    assert advance((1, 2, 3, 4), 3, ends_sentence=False, config=config) == (0, False)


class QA:
    def __init__(self, question: str, answer: str) -> None:
        self.question, self.answer = question, answer


TINY_EXAMPLES = [
    QA("Is the sky blue?", "yes"),
    QA("Is fire cold?", "no"),
    QA("Do fish swim?", "yes"),
    QA("Can stones fly?", "no"),
]


def _tiny_run(tiny_model, seed, steps=3):
    model = HFGradientModel(tiny_model)
    config = GreaterConfig(
        steps=steps,
        top_k=6,
        subset_size=2,
        num_subsets=3,
        max_reasoning_tokens=6,
        seed=seed,
        max_prompt_tokens=8,
    )
    return run_greater(
        TINY_EXAMPLES,
        initial_prompt="Think step by step",
        config=config,
        renderer=ChatTemplateRenderer(model.tokenizer),
        reasoner=HFReasoner(tiny_model, batch_size=4),
        gradient_model=model,
        progress=False,
    )


def test_same_seed_same_result(tiny_model):
    first, second = _tiny_run(tiny_model, seed=0), _tiny_run(tiny_model, seed=0)
    strip_time = lambda r: [{**asdict(h), "seconds": None} for h in r.history]  # noqa: E731
    assert strip_time(first) == strip_time(second)
    assert first.best_ids == second.best_ids
    # The prompt grew past its end: "step" does not end a sentence.
    assert any(len(h.prompt_after) > len("Think step by step") for h in first.history)


def test_an_interrupted_run_resumes_to_the_same_result(tiny_model):
    model = HFGradientModel(tiny_model)
    config = tiny_config(steps=4, num_subsets=3, seed=1)
    engines = dict(
        renderer=ChatTemplateRenderer(model.tokenizer),
        reasoner=HFReasoner(tiny_model, batch_size=4),
        gradient_model=model,
        config=config,
        progress=False,
        initial_prompt="Think step by step",
    )
    whole = run_greater(TINY_EXAMPLES, **engines)

    class Stop(Exception):
        pass

    def stop_after_two(record):
        if record.step == 1:
            raise Stop

    states, cache = [], {}
    with pytest.raises(Stop):
        run_greater(
            TINY_EXAMPLES,
            **engines,
            reasoning_cache=cache,
            on_checkpoint=states.append,
            on_step=stop_after_two,
        )
    assert [s.steps_done for s in states] == [0, 1, 2]
    resumed = run_greater(TINY_EXAMPLES, **engines, reasoning_cache=cache, state=states[-1])
    strip_time = lambda r: [{**asdict(h), "seconds": None} for h in r.history]  # noqa: E731
    assert strip_time(resumed) == strip_time(whole)
    assert resumed.best_ids == whole.best_ids and resumed.top_prompts == whole.top_prompts


def test_a_custom_scorer_decides_the_selection(tiny_model):
    from dspy_greater.search import PromptScore

    model = HFGradientModel(tiny_model)
    config = tiny_config(num_subsets=3, max_reasoning_tokens=4)
    seen = []

    renderer = ChatTemplateRenderer(model.tokenizer)

    def longest_word_wins(prompt, pairs):  # lower is better: prefer long tokens
        seen.append(len(pairs))
        for example, rendered in pairs:  # each example comes with its own rendering
            assert rendered.answer_ids == renderer.answer_ids(example.answer)
        text = model.tokenizer.decode(list(prompt))
        value = -max(len(w) for w in text.split())
        return PromptScore(0.0, 0.0, value)

    result = run_greater(
        TINY_EXAMPLES,
        initial_prompt="Think step by step",
        config=config,
        renderer=renderer,
        reasoner=HFReasoner(tiny_model, batch_size=4),
        gradient_model=model,
        progress=False,
        scorer=longest_word_wins,
    )
    assert seen and set(seen) == {len(TINY_EXAMPLES[: config.num_examples])}
    for record in result.history:
        assert record.scores[record.selected] == min(record.scores.values())
    assert result.best_score.value == min(s.value for _, _, s in result.top_prompts)


def test_keep_current_lets_a_step_keep_a_prompt_its_shortlist_cannot_beat(tiny_model):
    model = HFGradientModel(tiny_model)
    renderer = ChatTemplateRenderer(model.tokenizer)
    start = tuple(renderer.encode_prompt("Think step by step", TINY_EXAMPLES[0]))

    def the_start_is_best(prompt, pairs):  # lower is better
        return PromptScore(0.0, 0.0, 0.0 if prompt == start else 1.0)

    def run(**overrides):
        return run_greater(
            TINY_EXAMPLES,
            initial_prompt="Think step by step",
            config=tiny_config(num_subsets=3, steps=3, **overrides),
            renderer=renderer,
            reasoner=HFReasoner(tiny_model, batch_size=4),
            gradient_model=model,
            progress=False,
            scorer=the_start_is_best,
        )

    kept = run(keep_current=True)
    assert [r.selected for r in kept.history] == [start[r.position] for r in kept.history]
    assert all(r.prompt_after == r.prompt_before for r in kept.history)
    assert [r.position for r in kept.history] == [0, 1, 2]  # it still moves on
    # The paper's search always takes a shortlisted token, here one that is not the start's.
    moved = run()
    assert moved.history[0].prompt_after != moved.history[0].prompt_before


def test_the_answer_loss_weighs_in_the_selection_score_when_asked(tiny_model):
    model = HFGradientModel(tiny_model)
    renderer = ChatTemplateRenderer(model.tokenizer)
    cache: dict = {}
    result = run_greater(
        TINY_EXAMPLES,
        initial_prompt="Think step by step",
        config=tiny_config(num_subsets=3, steps=1, selection_loss_weight=0.5),
        renderer=renderer,
        reasoner=HFReasoner(tiny_model, batch_size=4),
        gradient_model=model,
        progress=False,
        reasoning_cache=cache,
    )
    start = tuple(renderer.encode_prompt("Think step by step", TINY_EXAMPLES[0]))
    rendered = [renderer.render(start, ex, cache[(start, i)]) for i, ex in enumerate(TINY_EXAMPLES)]
    loss = sum(r.answer_loss for r in model.score(rendered)) / len(rendered)
    score = result.initial_score
    assert loss > 0 and score.answer_loss == pytest.approx(loss, rel=1e-5)
    assert score.value == pytest.approx(score.mistake_rate + 0.02 * score.prompt_nll + 0.5 * loss)
    with pytest.raises(ValueError, match="selection_loss_weight must be >= 0"):
        GreaterConfig(selection_loss_weight=-1.0)


def test_one_real_step_on_smollm2(smollm2):
    model = HFGradientModel(smollm2)
    examples = dspy_greater.load_bbh("sports_understanding")[:4]
    config = GreaterConfig.budget("light", steps=1, num_examples=4, max_reasoning_tokens=32)
    seen = []
    result = run_greater(
        examples,
        initial_prompt=PAPER_PROMPT,
        config=config,
        renderer=ChatTemplateRenderer(model.tokenizer),
        reasoner=HFReasoner(smollm2, batch_size=4),
        gradient_model=model,
        on_step=seen.append,
        progress=False,
    )
    [step] = result.history
    assert seen == [step]
    initial_ids = ChatTemplateRenderer(model.tokenizer).encode_prompt(PAPER_PROMPT, examples[0])
    assert step.position == 0 and initial_ids[0] in step.candidates
    assert len(step.candidates) >= config.min_candidates
    assert set(step.shortlist) <= set(step.candidates) and len(step.shortlist) == 3
    assert set(step.scores) == set(step.shortlist)
    assert step.selected in step.shortlist
    assert all(t in step.seconds for t in ("reason", "propose", "gradient", "select"))
    assert step.prompt_before == PAPER_PROMPT
    assert result.initial_score.value >= result.best_score.value
    assert result.top_prompts[0][0] == result.best_prompt


def test_bad_inputs_have_clear_errors(tiny_model, tmp_path):
    model = HFGradientModel(tiny_model)
    engines = dict(
        renderer=ChatTemplateRenderer(model.tokenizer),
        reasoner=HFReasoner(tiny_model),
        gradient_model=model,
        progress=False,
    )
    with pytest.raises(ValueError, match="at least 2 training examples"):
        run_greater(TINY_EXAMPLES[:1], initial_prompt="Think.", **engines)
    with pytest.raises(ValueError, match="at least 2 training examples"):
        run_greater([], initial_prompt="Think.", **engines)
    with pytest.raises(ValueError, match="initial prompt is empty"):
        run_greater(TINY_EXAMPLES, initial_prompt="  ", **engines)
    with pytest.raises(ValueError, match="max_reasoning_tokens"):
        GreaterConfig(max_reasoning_tokens=0)
    with pytest.raises(FileNotFoundError, match="No model folder"):
        HFGradientModel(tmp_path / "missing")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailable, match="no CUDA GPU"):
            HFGradientModel(tiny_model, device="cuda")


def test_the_same_model_check_refuses_a_reasoner_that_is_another_model(smollm2, tiny_model):
    model = HFGradientModel(tiny_model)  # SmolLM2's tokenizer, random weights
    with pytest.raises(ModelMismatch, match="not the same weights"):
        check_same_model(HFReasoner(smollm2), model)
    assert check_same_model(HFReasoner(tiny_model), model) < 1e-3


def test_one_gradient_model_per_folder_and_dtype_while_it_is_in_use(tiny_model):
    import gc
    import weakref

    import torch

    from dspy_greater.adapters.hf_gradient import shared_gradient_model

    first = shared_gradient_model(tiny_model)
    assert shared_gradient_model(str(tiny_model) + "/") is first  # the same folder
    bf16 = shared_gradient_model(tiny_model, dtype="bfloat16")
    # Its weights in bfloat16 (computing in float32 where bfloat16 is slow): not the float32 one.
    first_dtypes, bf16_dtypes = ({p.dtype for p in m.model.parameters()} for m in (first, bf16))
    assert bf16 is not first and torch.bfloat16 in bf16_dtypes - first_dtypes
    released = weakref.ref(first)
    del first, bf16
    gc.collect()
    assert released() is None  # the registry kept no model alive once its users let go
    again = shared_gradient_model(tiny_model)
    assert shared_gradient_model(tiny_model) is again
