"""The plain chat-template renderer: exact slot spans, both placements, clear refusals."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from dspy_greater.chat_template import ChatTemplateRenderer
from dspy_greater.errors import SlotError


class QA:
    def __init__(self, question: str, answer: str) -> None:
        self.question, self.answer = question, answer


@pytest.fixture(scope="module")
def tokenizer(smollm2):
    return AutoTokenizer.from_pretrained(smollm2)


PROMPTS = [
    "Use proper logical reasoning and think step by step.",
    " Use logic, carefully.",  # a leading space
    "Think: (really) step-by-step; then answer!",  # punctuation
    "Contemplate antidisestablishmentarianism thoroughly",  # multi-token words
    "logic",
]


@pytest.mark.parametrize("placement", ["after_question", "before_question"])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_slot_span_is_exactly_the_prompt(tokenizer, placement, prompt):
    renderer = ChatTemplateRenderer(tokenizer, placement=placement)
    example = QA(
        'Is the following sentence plausible? "Joao Moutinho caught the screen pass."', "no"
    )
    context, slot = renderer.context(prompt, example)
    assert tokenizer.decode(context[slot]) == prompt
    # The span is what the whole rendered text tokenizes to: no token is shared with a neighbour.
    full_text = tokenizer.apply_chat_template(
        renderer.conversation(prompt, example), tokenize=False, add_generation_prompt=True
    )
    assert context == tuple(tokenizer(full_text, add_special_tokens=False)["input_ids"])
    assert (
        tokenizer.decode(context[: slot.start]) + prompt + tokenizer.decode(context[slot.stop :])
        == full_text
    )
    ids = renderer.encode_prompt(prompt, example)
    rendered = renderer.render(ids, example, reasoning_ids=(11, 12, 13))
    assert rendered.prompt_ids == ids
    assert rendered.ids[rendered.reasoning] == (11, 12, 13)
    assert tokenizer.decode(rendered.ids[rendered.extractor]) == renderer.extractor
    assert tokenizer.decode(rendered.answer_ids) == " no"
    assert rendered.context == context


def test_prompt_merging_across_the_boundary_is_refused(tokenizer):
    renderer = ChatTemplateRenderer(tokenizer, separator="")
    with pytest.raises(SlotError, match="merges"):
        renderer.context("s are plausible?", QA("Are these cat", "yes"))


def test_ids_that_do_not_survive_a_round_trip_are_refused(tokenizer):
    renderer = ChatTemplateRenderer(tokenizer)
    example = QA("Q?", "yes")
    split_word = tuple(tokenizer(" the", add_special_tokens=False)["input_ids"]) + tuple(
        tokenizer("re", add_special_tokens=False)["input_ids"]
    )
    assert tokenizer.decode(list(split_word)) == " there"
    with pytest.raises(SlotError, match="round trip"):
        renderer.render(split_word, example)


def test_bad_inputs_are_named(tokenizer):
    with pytest.raises(ValueError, match="whitespace"):
        ChatTemplateRenderer(tokenizer, extractor="Therefore, the final answer is ")
    with pytest.raises(ValueError, match="placement"):
        ChatTemplateRenderer(tokenizer, placement="middle")
    renderer = ChatTemplateRenderer(tokenizer)
    with pytest.raises(SlotError, match="empty"):
        renderer.context("", QA("Q?", "yes"))
    ids = renderer.encode_prompt("Think.", QA("Q?", "yes"))
    with pytest.raises(ValueError, match="tokenizes to nothing"):
        renderer.render(ids, QA("Q?", "  "))


@pytest.mark.parametrize("placement", ["after_question", "before_question"])
def test_messages_render_to_the_context(tokenizer, placement):
    """Reasoners are sent messages; their chat-template tokens must be the rendered context."""
    from dspy_greater.adapters.base import chat_prompt_ids

    renderer = ChatTemplateRenderer(tokenizer, placement=placement)
    example = QA("Is Messi a footballer?", "yes")
    ids = renderer.encode_prompt("Think it through, then answer.", example)
    [from_messages] = chat_prompt_ids(
        tokenizer, [renderer.messages(ids, example)], continue_final_message=False
    )
    assert tuple(from_messages) == renderer.render(ids, example).context
