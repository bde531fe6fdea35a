"""Where the prompt is in a rendered sequence: the renderers mark it in the text and find its tokens
from the tokenizer's offsets, never by searching for its tokens."""

from __future__ import annotations

from typing import Any

from .errors import SlotError

# Private-use marks around the prompt in the rendered text, removed before tokenizing.
_OPEN, _CLOSE = "\ue000", "\ue001"


def mark(prompt: str) -> str:
    """``prompt`` between the slot marks, to render in its place."""
    return _OPEN + prompt + _CLOSE


def unmark(rendered: str, what: str) -> tuple[str, int, int]:
    """The rendered text without the marks, and where the marked prompt starts and ends in it."""
    if rendered.count(_OPEN) != 1 or rendered.count(_CLOSE) != 1:
        raise SlotError(f"{what} did not render the prompt exactly once.")
    start, end = rendered.index(_OPEN), rendered.index(_CLOSE) - len(_OPEN)
    return rendered.replace(_OPEN, "").replace(_CLOSE, ""), start, end


def token_span(tokenizer: Any, text: str, start: int, end: int) -> tuple[tuple[int, ...], slice]:
    """Token ids of ``text`` and the span of tokens covering ``text[start:end]`` (the prompt).

    The span comes from the tokenizer's offsets, not from a search for the prompt's tokens; a
    prompt that merges with its neighbours into one token is refused (`SlotError`).
    """
    prompt = text[start:end]
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = encoded["offset_mapping"]
    inside = [i for i, (a, b) in enumerate(offsets) if a < end and b > start]
    straddling = [i for i in inside if offsets[i][0] < start or offsets[i][1] > end]
    if straddling:
        token = tokenizer.decode([encoded["input_ids"][straddling[0]]])
        raise SlotError(
            f"The prompt {prompt!r} merges with the text around it into the token {token!r}, "
            "so its tokens cannot be optimized alone. Separate it (e.g. start it with a "
            "letter after the separator, end it with punctuation)."
        )
    if not inside:
        raise SlotError(f"The prompt {prompt!r} covers no token of the rendered text.")
    return tuple(encoded["input_ids"]), slice(inside[0], inside[-1] + 1)
