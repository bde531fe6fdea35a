"""The protocols the engines implement, and the one unit of work they share.

Nothing here imports torch, vllm or dspy: the search and every renderer build on this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

Message = dict[str, str]
Conversation = list[Message]


@dataclass(frozen=True)
class Completion:
    """One generated continuation.

    ``token_ids`` are the ids the model generated (end-of-sequence excluded), so a caller can
    reuse them without re-tokenizing ``text``; a stop string is cut from ``text`` only.
    """

    text: str
    token_ids: tuple[int, ...]
    finish_reason: str  # "stop" (end of sequence or a stop string) or "length"


@dataclass(frozen=True)
class RenderedExample:
    """One example as the model sees it: ``[context with the prompt slot, reasoning, extractor,
    answer]`` as token ids, with the span of each part.

    ``slot`` is the prompt being optimized; ``context`` ends where generation of the reasoning
    starts. A renderer (plain chat template, or DSPy's adapter) produces these; the search and
    the gradient model see nothing else.
    """

    ids: tuple[int, ...]
    slot: slice
    reasoning: slice
    extractor: slice
    answer: slice

    @property
    def context(self) -> tuple[int, ...]:
        """The ids a reasoner continues to produce the reasoning."""
        return self.ids[: self.reasoning.start]

    @property
    def prompt_ids(self) -> tuple[int, ...]:
        return self.ids[self.slot]

    @property
    def answer_ids(self) -> tuple[int, ...]:
        return self.ids[self.answer]


@dataclass(frozen=True)
class ExampleScore:
    """Teacher-forced evaluation of one rendered example."""

    correct: bool  # greedy (argmax) prediction equals the gold answer at every answer token
    answer_loss: float  # mean cross-entropy of the answer tokens (temperature 1)
    prompt_nll: float  # mean negative log-likelihood of the prompt tokens


@runtime_checkable
class Reasoner(Protocol):
    """Batched greedy generation."""

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: int,
        stop: Sequence[str] = (),
        temperature: float = 0.0,
    ) -> list[Completion]:
        """Continue each token-id prompt (the ids are used as given): greedily, or sampled at
        ``temperature`` above 0."""
        ...

    def chat(
        self,
        conversations: Sequence[Conversation],
        *,
        max_new_tokens: int,
        stop: Sequence[str] = (),
        continue_final_message: bool = False,
    ) -> list[Completion]:
        """Complete each conversation greedily.

        With ``continue_final_message`` the last message (an assistant message) is continued
        as written instead of starting a new assistant turn.
        """
        ...

    def prompt_logprobs(self, ids: Sequence[int]) -> list[float]:
        """log P(ids[t] | ids[:t]) for t = 1 .. len(ids) - 1 (to check engines are one model)."""
        ...


def chat_prompt_ids(
    tokenizer: Any, conversations: Sequence[Conversation], *, continue_final_message: bool
) -> list[list[int]]:
    """Token ids of each conversation under the tokenizer's chat template, as vLLM builds them.

    The template writes the special tokens itself, so no second BOS is added.
    """
    texts = [
        tokenizer.apply_chat_template(
            list(conv),
            tokenize=False,
            add_generation_prompt=not continue_final_message,
            continue_final_message=continue_final_message,
        )
        for conv in conversations
    ]
    return [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]


class TemplateChat:
    """``chat()`` for reasoners that generate from token ids: render each conversation with the
    reasoner's ``tokenizer`` (`chat_prompt_ids`), then call its ``generate``."""

    tokenizer: Any

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: int,
        stop: Sequence[str] = (),
        temperature: float = 0.0,
    ) -> list[Completion]:
        raise NotImplementedError

    def chat(
        self,
        conversations: Sequence[Conversation],
        *,
        max_new_tokens: int,
        stop: Sequence[str] = (),
        continue_final_message: bool = False,
    ) -> list[Completion]:
        """Complete each conversation greedily; see `Reasoner`."""
        ids = chat_prompt_ids(
            self.tokenizer, conversations, continue_final_message=continue_final_message
        )
        return self.generate(ids, max_new_tokens=max_new_tokens, stop=stop)


@runtime_checkable
class GradientModel(Protocol):
    """A local differentiable model: proposals, one-hot gradients and exact scores at a slot."""

    @property
    def vocab(self) -> Sequence[str]:
        """The decoded text of every token id (for the readability filter)."""
        ...

    @property
    def special_ids(self) -> frozenset[int]: ...

    def ranked_next_tokens(
        self,
        examples: Sequence[RenderedExample],
        position: int,
        *,
        allowed: frozenset[int] | None,
        limit: int,
    ) -> list[list[int]]:
        """Per example, the ``limit`` most likely tokens at prompt ``position`` (given the context
        and ``prompt[:position]``) among ``allowed`` (all if None), most likely first. ``position``
        may equal the prompt length: the token that would follow the prompt."""
        ...

    def candidate_gradients(
        self,
        examples: Sequence[RenderedExample],
        position: int,
        candidates: Sequence[int],
        *,
        answer_temperature: float,
        fluency_weight: float,
    ) -> list[float]:
        """d loss / d one-hot weight of each candidate at prompt ``position``, summed over examples.

        loss = CE(answer logits / answer_temperature) + fluency_weight * mean prompt NLL, with the
        embedding at the slot position replaced by ``onehot @ E[candidates]`` (one-hot on the
        current token, which must be among the candidates).
        """
        ...

    def score(self, examples: Sequence[RenderedExample]) -> list[ExampleScore]:
        """Exact teacher-forced scores of each example."""
        ...

    def prompt_nll(self, examples: Sequence[RenderedExample]) -> float:
        """The prompt tokens' mean NLL given what precedes them, averaged over ``examples``."""
        ...

    def prompt_logprobs(self, ids: Sequence[int]) -> list[float]:
        """log P(ids[t] | ids[:t]) for t = 1 .. len(ids) - 1."""
        ...


@runtime_checkable
class Renderer(Protocol):
    """Turns (prompt ids, example, reasoning ids) into a `RenderedExample`.

    The plain chat-template renderer and DSPy's adapter are two implementations.
    ``continue_final_message`` and ``stop`` say how a reasoner completes ``messages()``: whether
    their last (assistant) message is continued, and where the reasoning ends.
    """

    @property
    def continue_final_message(self) -> bool: ...

    @property
    def stop(self) -> tuple[str, ...]: ...

    def render(
        self, prompt_ids: Sequence[int], example: Any, reasoning_ids: Sequence[int] = ()
    ) -> RenderedExample:
        """Raise ``ValueError`` when ``prompt_ids`` do not survive a text round trip in context."""
        ...

    def encode_prompt(self, prompt: str, example: Any) -> tuple[int, ...]:
        """The token ids ``prompt`` has in ``example``'s rendered context."""
        ...

    def messages(self, prompt_ids: Sequence[int], example: Any) -> Conversation:
        """The chat messages whose chat-template rendering is ``render(...).context``: what a
        reasoner (local or a server) is asked to continue."""
        ...

    def decode_prompt(self, prompt_ids: Sequence[int]) -> str: ...
