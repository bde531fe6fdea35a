"""`AdapterRenderer`: a predictor's instructions, an example and a reasoning chain as the token ids
`ForcedExtractionAdapter` sends (a `Renderer`). The prompt is the instructions, the extractor
the adapter's answer header; the prompt's tokens come from the tokenizer's offsets
(`dspy_greater.slot`). The paper's own setting, without DSPy, is
`dspy_greater.chat_template.ChatTemplateRenderer`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import dspy
from dspy.adapters.utils import format_field_value

from .adapters.base import Conversation, RenderedExample
from .errors import SlotError
from .forced_extraction import STOP, ForcedExtractionAdapter, header
from .slot import mark, token_span, unmark
from .values import closed_choices, json_value, parse_field


def reasoning_and_answer(signature: Any, name: str = "the predictor") -> tuple[str, str]:
    """The output field reasoned in and the one answered: a signature needs exactly two."""
    outputs = list(signature.output_fields)
    if len(outputs) != 2:
        raise SlotError(
            f"GReaTer reasons in one output field and targets another; {name} has output "
            f"fields {outputs}. Wrap it in dspy.ChainOfThought with one output field."
        )
    return outputs[0], outputs[1]


@dataclass
class AdapterRenderer:
    """Render (instructions, example, reasoning, answer) as `ForcedExtractionAdapter`
    sends them, as token ids for the gradient pass (a
    `Renderer`).

    ``signature`` needs a reasoning field and an answer field (``dspy.ChainOfThought``'s): the
    first output field is reasoned in, the last is the answer; the prompt being optimized is
    the signature's instructions. Examples are ``dspy.Example``s with the input fields and the
    answer field.
    """

    signature: type[dspy.Signature]
    tokenizer: Any
    adapter: ForcedExtractionAdapter
    demos: Sequence[dict[str, Any]] = ()
    # Whether a closed-set answer is written as JSON (the adapter constrains it for this LM:
    # ``adapter.constrains(lm)``); a ``str`` answer is written as is either way.
    constrained: bool = True

    continue_final_message: ClassVar[bool] = True
    stop: ClassVar[tuple[str, ...]] = (STOP,)

    def __post_init__(self) -> None:
        self.reasoning_field, self.answer_field = reasoning_and_answer(
            self.signature, repr(self.signature.signature)
        )

    def _inputs(self, example: Any) -> dict[str, Any]:
        missing = [k for k in self.signature.input_fields if k not in example]
        if missing:
            raise KeyError(f"The example lacks the input field(s) {missing}: {example}")
        return {k: example[k] for k in self.signature.input_fields}

    def _messages(
        self, prompt: str, example: Any, values: dict[str, str], field: str
    ) -> Conversation:
        signature = self.signature.with_instructions(prompt)
        return self.adapter.continuation(
            signature, list(self.demos), self._inputs(example), values, field
        )

    def messages(self, prompt_ids: Sequence[int], example: Any) -> Conversation:
        return self._messages(self.decode_prompt(prompt_ids), example, {}, self.reasoning_field)

    def decode_prompt(self, prompt_ids: Sequence[int]) -> str:
        # Instructions are rendered stripped; a leading space is the indentation's (below).
        return self.tokenizer.decode(list(prompt_ids)).strip()

    def _context(
        self, prompt: str, example: Any, values: dict[str, str], field: str
    ) -> tuple[str, tuple[int, ...], slice]:
        if not prompt.strip():
            raise SlotError("The instructions are empty; start from a non-empty prompt.")
        rendered = self.tokenizer.apply_chat_template(
            self._messages(mark(prompt), example, values, field),
            tokenize=False,
            add_generation_prompt=False,
            continue_final_message=True,
        )
        text, start, end = unmark(rendered, "The adapter")
        if text[start:end] != prompt:
            raise SlotError(
                f"The adapter renders the instructions {prompt!r} as "
                f"{text[start:end]!r}; use single-line instructions."
            )
        if start > 0 and text[start - 1] == " " and not prompt[0].isspace():
            # ChatAdapter indents the instructions; BPE tokenizers fold the space before a
            # word into the word's token, so that space belongs to the slot's first token.
            start -= 1
        ids, slot = token_span(self.tokenizer, text, start, end)
        return text, ids, slot

    def encode_prompt(self, prompt: str, example: Any) -> tuple[int, ...]:
        _, ids, slot = self._context(prompt, example, {}, self.reasoning_field)
        return ids[slot]

    def reasoning_text(self, reasoning_ids: Sequence[int]) -> str:
        """The reasoning field's value as the adapter writes it back: cut at a header, stripped."""
        return self.tokenizer.decode(list(reasoning_ids)).split(STOP, 1)[0].strip()

    def _ids(self, text: str) -> tuple[int, ...]:
        return tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def answer_ids(self, example: Any) -> tuple[int, ...]:
        """The gold answer as the adapter formats the answer field, as the model writes it."""
        info = self.signature.output_fields[self.answer_field]
        gold = example[self.answer_field]
        if self.constrained and closed_choices(info.annotation) is not None:
            text = json.dumps(json_value(parse_field(str(gold), info.annotation)))
        else:
            text = format_field_value(info, gold)
        ids = self._ids(text)
        if not ids:
            raise ValueError(
                f"The gold answer {example[self.answer_field]!r} tokenizes to nothing."
            )
        return ids

    def decisive_answer(self, example: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The gold answer's ids as (forced, decisive). Constrained to a closed set, the model
        can only write one of the choices' JSON: tokens every choice starts with (a quote) are
        forced, so they join the context; tokens every choice ends with are dropped. Only the
        tokens that tell the choices apart are the answer the loss reads. Otherwise: ((), all).
        """
        gold = self.answer_ids(example)
        choices = closed_choices(self.signature.output_fields[self.answer_field].annotation)
        if not self.constrained or choices is None:
            return (), gold
        spelled = [self._ids(json.dumps(json_value(choice))) for choice in choices]
        shortest = min(len(ids) for ids in spelled)
        shared = lambda at: all(ids[at] == spelled[0][at] for ids in spelled)  # noqa: E731
        start = 0
        while start < shortest - 1 and shared(start):
            start += 1
        end = 0  # tokens dropped from the end
        while start + end < shortest - 1 and shared(-1 - end):
            end += 1
        return gold[:start], gold[start : len(gold) - end]

    def render(
        self, prompt_ids: Sequence[int], example: Any, reasoning_ids: Sequence[int] = ()
    ) -> RenderedExample:
        """``[messages up to the answer header, gold answer]``: the tokens the adapter's answer
        call continues, then the gold answer; spans from the tokenizer's offsets."""
        prompt = self.decode_prompt(prompt_ids)
        reasoning = self.reasoning_text(reasoning_ids)
        text, ids, slot = self._context(
            prompt, example, {self.reasoning_field: reasoning}, self.answer_field
        )
        if ids[slot] != tuple(prompt_ids):
            raise SlotError(
                f"The prompt ids {list(prompt_ids)} decode to {prompt!r}, which tokenizes to "
                f"{list(ids[slot])} in context; the ids do not survive a text round trip."
            )
        # Characters of the reasoning value: after the reasoning header, before the answer's.
        r_start = text.rindex(header(self.reasoning_field)) + len(header(self.reasoning_field)) + 1
        r_end = r_start + len(reasoning)
        offsets = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)[
            "offset_mapping"
        ]
        first = next(i for i, (a, b) in enumerate(offsets) if b > r_start)
        after = next((i for i, (a, b) in enumerate(offsets) if a >= r_end and i >= first), len(ids))
        forced, answer = self.decisive_answer(example)
        ids += forced
        a0 = len(ids)
        return RenderedExample(
            ids=ids + answer,
            slot=slot,
            reasoning=slice(first, after),
            extractor=slice(after, a0),
            answer=slice(a0, a0 + len(answer)),
        )
