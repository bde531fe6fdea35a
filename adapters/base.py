"""The protocols the engines implement. Nothing here imports torch, vllm or dspy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

Message = dict[str, str]
Conversation = list[Message]


@dataclass(frozen=True)
class Completion:
    """One generated continuation.

    ``token_ids`` are the ids the model generated (before any stop string was cut from
    ``text``), so a caller can reuse them without re-tokenizing the text.
    """

    text: str
    token_ids: tuple[int, ...]
    finish_reason: str  # "stop" (end of sequence or a stop string) or "length"


@runtime_checkable
class Reasoner(Protocol):
    """Batched greedy generation from chat conversations."""

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
