"""The GReaTer paper's setting, without DSPy: the user turn holds the question and the prompt,
the model reasons in the assistant turn, the extractor (``Therefore, the final answer is``)
follows the reasoning and the gold answer follows it, on the model's own chat template."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from .adapters.base import Conversation, RenderedExample
from .errors import SlotError
from .slot import mark, token_span, unmark

PAPER_EXTRACTOR = "\nTherefore, the final answer is"

Placement = Literal["after_question", "before_question"]


@dataclass
class ChatTemplateRenderer:
    """Render ``(question, prompt, reasoning, extractor, answer)`` with the model's chat template.

    Examples are any objects with ``question`` and ``answer`` attributes (``dspy.Example`` works).
    """

    tokenizer: Any
    placement: Placement = "after_question"
    extractor: str = PAPER_EXTRACTOR
    separator: str = "\n\n"
    system: str | None = None
    _answer_cache: dict[str, tuple[int, ...]] = field(default_factory=dict, repr=False)
    # How a reasoner continues ``messages()``: a new assistant turn, up to the token budget.
    continue_final_message: ClassVar[bool] = False
    stop: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        if self.placement not in ("after_question", "before_question"):
            raise ValueError(
                f"placement must be 'after_question' or 'before_question', got {self.placement!r}."
            )
        if not self.extractor.strip():
            raise ValueError(
                "The extractor text is empty; use e.g. 'Therefore, the final answer is'."
            )
        if self.extractor != self.extractor.rstrip():
            # BPE puts a space inside the next token: a forced trailing space derails the answer.
            raise ValueError(f"The extractor {self.extractor!r} ends with whitespace; remove it.")
        self._extractor_ids = self._encode(self.extractor)

    def _encode(self, text: str) -> tuple[int, ...]:
        return tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def conversation(self, prompt: str, example: Any) -> Conversation:
        """The chat messages that ask ``example``'s question with ``prompt``."""
        parts = [example.question, prompt]
        if self.placement == "before_question":
            parts.reverse()
        messages = [{"role": "system", "content": self.system}] if self.system else []
        return messages + [{"role": "user", "content": self.separator.join(parts)}]

    def context(self, prompt: str, example: Any) -> tuple[tuple[int, ...], slice]:
        """Token ids of the chat up to the assistant's reply, and the prompt's token span.

        The span comes from the tokenizer's offsets around a sentinel, not from a string search
        for the prompt; a prompt that merges with its neighbours into one token is refused.
        """
        if not prompt:
            raise SlotError("The prompt is empty; start from a non-empty prompt.")
        rendered = self.tokenizer.apply_chat_template(
            self.conversation(mark(prompt), example), tokenize=False, add_generation_prompt=True
        )
        text, start, end = unmark(rendered, "The chat template")
        return token_span(self.tokenizer, text, start, end)

    def encode_prompt(self, prompt: str, example: Any) -> tuple[int, ...]:
        """The token ids ``prompt`` has in ``example``'s rendered context."""
        context, slot = self.context(prompt, example)
        return context[slot]

    def messages(self, prompt_ids: Sequence[int], example: Any) -> Conversation:
        return self.conversation(self.decode_prompt(prompt_ids), example)

    def decode_prompt(self, prompt_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(prompt_ids))

    def answer_ids(self, answer: str) -> tuple[int, ...]:
        """The gold answer's tokens as the model writes them after the extractor."""
        if answer not in self._answer_cache:
            ids = self._encode(" " + answer.strip())
            if not answer.strip() or not ids:
                raise ValueError(f"The target answer {answer!r} tokenizes to nothing.")
            self._answer_cache[answer] = ids
        return self._answer_cache[answer]

    def render(
        self, prompt_ids: Sequence[int], example: Any, reasoning_ids: Sequence[int] = ()
    ) -> RenderedExample:
        """The full sequence for ``prompt_ids``; raises `SlotError` when the prompt's text
        does not tokenize back to ``prompt_ids`` in context (its ids are not a stable prompt)."""
        prompt = self.decode_prompt(prompt_ids)
        context, slot = self.context(prompt, example)
        if context[slot] != tuple(prompt_ids):
            raise SlotError(
                f"The prompt ids {list(prompt_ids)} decode to {prompt!r}, which tokenizes to "
                f"{list(context[slot])} in context; the ids do not survive a text round trip."
            )
        answer = self.answer_ids(str(example.answer))
        r0 = len(context)
        e0 = r0 + len(reasoning_ids)
        a0 = e0 + len(self._extractor_ids)
        ids = context + tuple(reasoning_ids) + self._extractor_ids + answer
        return RenderedExample(
            ids=ids,
            slot=slot,
            reasoning=slice(r0, e0),
            extractor=slice(e0, a0),
            answer=slice(a0, a0 + len(answer)),
        )
