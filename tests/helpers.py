"""Small pieces several test modules share."""

from __future__ import annotations

from typing import Any

import dspy

from dspy_greater.search import GreaterConfig


def tiny_config(**overrides: Any) -> GreaterConfig:
    """A search small enough for the tiny random model: top-k 6 over subsets of 2 examples,
    6 reasoning tokens, prompts of at most 8 tokens, 2 steps."""
    settings: dict[str, Any] = dict(
        steps=2, top_k=6, subset_size=2, num_subsets=2, max_reasoning_tokens=6, max_prompt_tokens=8
    )
    return GreaterConfig(**{**settings, **overrides})


def even_questions(n: int) -> list[dspy.Example]:
    """``Is k even?`` for k < n, answered yes or no."""
    return [
        dspy.Example(question=f"Is {k} even?", answer="yes" if k % 2 == 0 else "no").with_inputs(
            "question"
        )
        for k in range(n)
    ]
