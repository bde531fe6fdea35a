"""A field's value as DSPy types it: closed sets (``bool``, ``Literal``, ``Enum``) mapped from what
a small model writes, numbers found in prose, everything else by DSPy's own ``parse_value``."""

from __future__ import annotations

import enum
import json
import re
import typing
from collections.abc import Sequence
from typing import Any, Literal

from dspy.adapters.utils import parse_value

_WORD = re.compile(r"[\w()]+")


def closed_choices(annotation: Any) -> list[Any] | None:
    """The values of a closed type (``bool``, ``Literal[...]``, an ``Enum``); None otherwise."""
    if annotation is bool:
        return [True, False]
    if typing.get_origin(annotation) is Literal:
        return list(typing.get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return list(annotation)
    return None


def _norm(text: str) -> str:
    return " ".join(_WORD.findall(text.casefold()))


def _spellings(choice: Any) -> list[str]:
    if isinstance(choice, bool):
        return ["true", "yes"] if choice else ["false", "no"]
    if isinstance(choice, enum.Enum):
        return [_norm(str(choice.value)), _norm(choice.name)]
    return [_norm(str(choice))]


def map_to_choice(text: str, choices: Sequence[Any]) -> Any:
    """The choice ``text`` names: equal after normalising case and punctuation, else the choice
    it starts with (longest first), else the only choice it mentions as a whole word.
    Raises ``ValueError`` when none or several match."""
    said = _norm(text)
    spelled = [(s, c) for c in choices for s in _spellings(c) if s]
    for spelling, choice in spelled:
        if said == spelling:
            return choice
    for spelling, choice in sorted(spelled, key=lambda sc: -len(sc[0])):
        if said.startswith(spelling + " "):
            return choice
    mentioned = {id(c): c for s, c in spelled if re.search(rf"(?<!\w){re.escape(s)}(?!\w)", said)}
    if len(mentioned) == 1:
        return next(iter(mentioned.values()))
    raise ValueError(
        f"{text!r} names none of {list(choices)!r}"
        if not mentioned
        else f"{text!r} names several of {list(choices)!r}"
    )


def parse_field(text: str, annotation: Any, *, constrained: bool = False) -> Any:
    """``text`` (one field's value, as the model wrote it) as a value of ``annotation``.

    Raises ``ValueError`` when it cannot be one.
    """
    if annotation is str:
        return text
    choices = closed_choices(annotation)
    if choices is not None:
        if constrained:  # JSON from the schema constraint: an exact value
            value = json.loads(text)
            for choice in choices:
                if value == (choice.value if isinstance(choice, enum.Enum) else choice):
                    return choice
        return map_to_choice(text, choices)
    try:
        return parse_value(text, annotation)
    except (ValueError, TypeError) as exc:
        if annotation in (int, float):
            number = re.search(r"-?\d+(?:\.\d+)?", text.replace(",", ""))
            if number:
                value = float(number.group())
                if annotation is float:
                    return value
                if value.is_integer():  # "3" or "3.0"; "3.7" is no int, and is not cut to 3
                    return int(value)
                raise ValueError(f"{text!r} is not an integer") from exc
        raise ValueError(str(exc)) from exc


def json_value(choice: Any) -> Any:
    return choice.value if isinstance(choice, enum.Enum) else choice
