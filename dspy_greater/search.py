"""The GReaTer search (gradients over reasoning), independent of DSPy.

One step at prompt position ``i``: reason with the current prompt; propose candidate tokens from the
model's own next-token distribution at ``i``; rank them by the one-hot gradient of the answer loss
taken through the reasoning; regenerate the reasoning for the best few and keep the one with the
lowest ``mistake rate + 0.02 * prompt NLL``; move to the next position. See docs/algorithm.md.

The search sees token ids and `RenderedExample` s only; a `Renderer` turns examples
into them, a `Reasoner` writes the reasoning, a `GradientModel` takes gradients.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from logging import DEBUG, INFO
from typing import Any, Literal

from .adapters.base import GradientModel, Reasoner, RenderedExample, Renderer

logger = logging.getLogger(__name__)

Prompt = tuple[int, ...]
# Scores a prompt from its examples, each with its rendering (the reasoning already generated);
# lower is better.
Scorer = Callable[["Prompt", "Sequence[tuple[Any, RenderedExample]]"], "PromptScore"]
Budget = Literal["light", "medium", "heavy"]
# The paper's starting prompt.
PAPER_PROMPT = (
    "Use proper logical reasoning and think step by step. Finally give the actual correct answer."
)
# Search settings per budget: "light" runs in minutes on a 2-core CPU with SmolLM2; "heavy" is
# the paper's (100 steps over 50 examples, the defaults).
# keep_top is also how many prompts GReaTer validates at the end of a stage (beside the start):
# each costs a pass over the valset, which on the light budget cost more than the search.
BUDGETS: dict[str, dict[str, int]] = {
    "light": dict(
        steps=8,
        num_examples=8,
        top_k=10,
        num_subsets=4,
        subset_size=3,
        max_reasoning_tokens=128,
        keep_top=3,
    ),
    "medium": dict(
        steps=25,
        num_examples=16,
        top_k=20,
        num_subsets=5,
        subset_size=4,
        max_reasoning_tokens=256,
        keep_top=5,
    ),
    "heavy": {},
}
# The paper's readability filter: letters and spaces, or exactly "." or ",".
_READABLE = re.compile(r"[A-Za-z ]+|[.,]")


@dataclass(frozen=True)
class GreaterConfig:
    """Every knob of the search, with the GReaTer paper's defaults."""

    steps: int = 100
    num_examples: int = 50  # training examples used (the first ones given)
    top_k: int = 40  # per-example top-k at the start of each proposal
    top_k_step: int = 2  # k grows by this while too few candidates survive
    max_top_k: int = 256
    num_subsets: int = 6  # q: random subsets whose top-k intersections are united
    subset_size: int = 5
    min_candidates: int = 6
    shortlist: int = 3  # candidates regenerated and evaluated per step
    answer_temperature: float = 0.2
    fluency_weight: float = 0.2  # prompt NLL in the gradient loss
    selection_nll_weight: float = 0.02  # prompt NLL in the selection score
    # Not the paper's (0 and False there): the mean teacher-forced answer loss in the selection
    # score, a finer signal than 0/1 mistakes on a few examples; and the current prompt among
    # the choices, so that a step whose shortlist scores worse keeps it and moves on.
    selection_loss_weight: float = 0.0
    keep_current: bool = False
    max_reasoning_tokens: int = 1024
    max_prompt_tokens: int = 96  # at this length the position wraps to 0 instead of growing
    filler: str | None = None  # token appended to grow the prompt; None: the model's likeliest
    keep_top: int = 10  # best prompts remembered
    seed: int = 0

    @classmethod
    def budget(cls, name: Budget, **overrides: Any) -> GreaterConfig:
        """The settings of a budget (``"light"``, ``"medium"``, ``"heavy"``: the paper's), with
        ``overrides``."""
        if name not in BUDGETS:
            raise ValueError(f"The budget must be one of {list(BUDGETS)}, got {name!r}.")
        return cls(**{**BUDGETS[name], **overrides})

    def __post_init__(self) -> None:
        positive = (
            "steps",
            "num_examples",
            "top_k",
            "top_k_step",
            "max_top_k",
            "num_subsets",
            "subset_size",
            "min_candidates",
            "shortlist",
            "max_reasoning_tokens",
            "max_prompt_tokens",
            "keep_top",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"GreaterConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if self.answer_temperature <= 0:
            raise ValueError("GreaterConfig.answer_temperature must be > 0.")
        for name in ("fluency_weight", "selection_nll_weight", "selection_loss_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"GreaterConfig.{name} must be >= 0, got {getattr(self, name)}.")


@dataclass(frozen=True)
class PromptScore:
    """Selection score of a prompt on the training examples (lower is better)."""

    mistake_rate: float
    prompt_nll: float
    value: float
    answer_loss: float = 0.0  # mean teacher-forced answer loss (0 where a scorer does not weigh it)

    @classmethod
    def of(
        cls,
        mistake_rate: float,
        prompt_nll: float,
        nll_weight: float,
        answer_loss: float = 0.0,
        loss_weight: float = 0.0,
    ) -> PromptScore:
        """The selection score: ``mistake_rate + nll_weight * prompt_nll`` (the paper's), plus
        ``loss_weight * answer_loss``."""
        value = mistake_rate + nll_weight * prompt_nll + loss_weight * answer_loss
        return cls(mistake_rate, prompt_nll, value, answer_loss)


@dataclass
class StepRecord:
    """What one step saw and chose (JSON-serialisable through `dataclasses.asdict`)."""

    step: int
    position: int
    prompt_before: str
    top_k: int
    candidates: list[int]
    gradients: list[float]
    shortlist: list[int]
    scores: dict[int, float]
    selected: int
    prompt_after: str
    score_after: float
    seconds: dict[str, float]


@dataclass
class GreaterResult:
    """The outcome of a search: the best prompt by training score, the best few, the history."""

    best_prompt: str
    best_ids: Prompt
    best_score: PromptScore
    initial_prompt: str
    initial_score: PromptScore
    top_prompts: list[tuple[str, Prompt, PromptScore]]
    history: list[StepRecord] = field(default_factory=list)
    setup_seconds: dict[str, float] = field(default_factory=dict)  # the initial prompt's phases


@dataclass
class SearchState:
    """Where a search stands between two steps: enough to continue it exactly.

    ``scores`` holds every prompt scored so far (the best few are chosen from them);
    ``rng_state`` is ``random.Random.getstate()``. With the reasoning chains kept too (the
    ``reasoning_cache`` of `run_greater`), a continued run equals an uninterrupted one.
    """

    steps_done: int
    prompt: Prompt
    position: int
    rng_state: Any
    history: list[StepRecord]
    scores: dict[Prompt, PromptScore]
    initial: Prompt
    setup_seconds: dict[str, float] = field(default_factory=dict)


def readable_tokens(vocab: Sequence[str], special_ids: frozenset[int]) -> frozenset[int]:
    """Token ids the paper allows in a prompt: ASCII letters and spaces, or exactly '.' or ','."""
    return frozenset(
        i for i, text in enumerate(vocab) if i not in special_ids and _READABLE.fullmatch(text)
    )


def propose(
    ranked: Sequence[Sequence[int]],
    *,
    current: int,
    previous: int | None,
    config: GreaterConfig,
    rng: random.Random,
) -> tuple[list[int], int]:
    """Candidate tokens for one position, and the k that produced them.

    ``ranked`` holds each example's readable tokens, most likely first. Take each example's
    top-k, intersect them within ``num_subsets`` random subsets of ``subset_size`` examples and
    unite the intersections; grow k while fewer than ``min_candidates`` survive. The previous
    prompt token is never proposed (no repeats); the current token is always kept.
    """
    n = len(ranked)
    size = min(config.subset_size, n)
    k = config.top_k
    while True:
        tops = [set(r[:k]) - {previous} for r in ranked]
        union: set[int] = set()
        for _ in range(config.num_subsets):
            subset = rng.sample(range(n), size)
            union |= set.intersection(*(tops[j] for j in subset))
        if len(union) >= config.min_candidates or k >= config.max_top_k:
            break
        k = min(k + config.top_k_step, config.max_top_k)
    union.add(current)
    return sorted(union), k


def shortlist_by_gradient(
    candidates: Sequence[int], gradients: Sequence[float], n: int
) -> list[int]:
    """The ``n`` candidates whose one-hot gradient is most negative (largest first-order loss
    decrease), most promising first; ties broken by token id for determinism."""
    order = sorted(range(len(candidates)), key=lambda j: (gradients[j], candidates[j]))
    return [candidates[j] for j in order[:n]]


def select(scores: dict[int, PromptScore]) -> int:
    """The candidate with the lowest selection score (ties: the lower token id)."""
    return min(scores, key=lambda token: (scores[token].value, token))


def advance(
    prompt: Prompt, position: int, *, ends_sentence: bool, config: GreaterConfig
) -> tuple[int, bool]:
    """Next position, and whether the prompt must grow by one token to reach it.

    Inside the prompt, move right. At its end: wrap to 0 after a sentence end (or at
    ``max_prompt_tokens``), otherwise grow the prompt and optimize the new token next.
    """
    if position < len(prompt) - 1:
        return position + 1, False
    if ends_sentence or len(prompt) >= config.max_prompt_tokens:
        return 0, False
    return len(prompt), True


class _Search:
    """State of one run: engines, examples, the reasoning cache and the best prompts seen."""

    def __init__(
        self,
        config: GreaterConfig,
        examples: Sequence[Any],
        renderer: Renderer,
        reasoner: Reasoner,
        gradient_model: GradientModel,
        reasoning_cache: MutableMapping[tuple[Prompt, int], tuple[int, ...]] | None,
        scorer: Scorer | None,
    ) -> None:
        self.config = config
        self.examples = list(examples)
        self.renderer = renderer
        self.reasoner = reasoner
        self.model = gradient_model
        self.allowed = readable_tokens(gradient_model.vocab, gradient_model.special_ids)
        # (prompt ids, example index) -> reasoning ids; never generate the same chain twice.
        self.reasoning = reasoning_cache if reasoning_cache is not None else {}
        self.scorer = scorer or self.teacher_forced_score
        self.scores: dict[Prompt, PromptScore] = {}

    def text(self, prompt: Prompt) -> str:
        return self.renderer.decode_prompt(prompt)

    def round_trips(self, prompt: Prompt) -> bool:
        """Whether ``prompt``'s text tokenizes back to ``prompt`` in every example's context."""
        try:
            for example in self.examples:
                self.renderer.render(prompt, example)
        except ValueError:
            return False
        return True

    def reason(self, prompts: Sequence[Prompt]) -> None:
        """Generate, in one batch, every missing reasoning chain for these prompts."""
        todo = [
            (p, i)
            for p in dict.fromkeys(prompts)
            for i in range(len(self.examples))
            if (p, i) not in self.reasoning
        ]
        if not todo:
            return
        # As chat messages, so that a server reasoner works too; local reasoners tokenize them
        # exactly as the renderer does.
        conversations = [self.renderer.messages(p, self.examples[i]) for p, i in todo]
        completions = self.reasoner.chat(
            conversations,
            max_new_tokens=self.config.max_reasoning_tokens,
            stop=self.renderer.stop,
            continue_final_message=self.renderer.continue_final_message,
        )
        for key, completion in zip(todo, completions, strict=True):
            self.reasoning[key] = completion.token_ids

    def rendered(self, prompt: Prompt) -> list[RenderedExample]:
        return [
            self.renderer.render(prompt, ex, self.reasoning[(prompt, i)])
            for i, ex in enumerate(self.examples)
        ]

    def score(self, prompt: Prompt) -> PromptScore:
        if prompt not in self.scores:
            pairs = list(zip(self.examples, self.rendered(prompt), strict=True))
            self.scores[prompt] = self.scorer(prompt, pairs)
        return self.scores[prompt]

    def teacher_forced_score(
        self, prompt: Prompt, pairs: Sequence[tuple[Any, RenderedExample]]
    ) -> PromptScore:
        """The paper's selection score: teacher-forced mistake rate + weight * prompt NLL (+
        weight * answer loss)."""
        results = self.model.score([rendered for _, rendered in pairs])
        mistakes = sum(not r.correct for r in results) / len(results)
        nll = sum(r.prompt_nll for r in results) / len(results)
        loss = sum(r.answer_loss for r in results) / len(results)
        config = self.config
        return PromptScore.of(
            mistakes, nll, config.selection_nll_weight, loss, config.selection_loss_weight
        )

    def filler(self, prompt: Prompt) -> int | None:
        """The token to append: the configured filler, or the model's likeliest readable token."""
        if self.config.filler is not None:
            matches = [i for i, t in enumerate(self.model.vocab) if t == self.config.filler]
            if not matches:
                raise ValueError(f"The filler {self.config.filler!r} is not a single token.")
            return matches[0]
        ranked = self.model.ranked_next_tokens(
            self.rendered(prompt), len(prompt), allowed=self.allowed, limit=self.config.top_k
        )
        votes: dict[int, float] = {}
        for row in ranked:
            for rank, token in enumerate(row):
                votes[token] = votes.get(token, 0.0) + 1.0 / (rank + 1)
        for token in sorted(votes, key=lambda t: (-votes[t], t)):
            if token != prompt[-1] and self.round_trips(prompt + (token,)):
                return token
        return None

    def top_prompts(self) -> list[tuple[str, Prompt, PromptScore]]:
        best = sorted(self.scores.items(), key=lambda item: (item[1].value, len(item[0])))
        return [(self.text(p), p, s) for p, s in best[: self.config.keep_top]]


def run_greater(
    examples: Sequence[Any],
    *,
    initial_prompt: str,
    renderer: Renderer,
    reasoner: Reasoner,
    gradient_model: GradientModel,
    config: GreaterConfig | None = None,
    on_step: Callable[[StepRecord], None] | None = None,
    progress: bool = True,
    scorer: Scorer | None = None,
    reasoning_cache: MutableMapping[tuple[Prompt, int], tuple[int, ...]] | None = None,
    state: SearchState | None = None,
    on_checkpoint: Callable[[SearchState], None] | None = None,
    desc: str = "GReaTer",
) -> GreaterResult:
    """Run the GReaTer search on ``examples`` from ``initial_prompt``; return the best prompts.

    The reasoner and the gradient model must be one model; check it first with
    `check_same_model`.

    Args:
        examples: Whatever ``renderer`` renders (objects with ``question`` and ``answer`` for the
            chat-template renderer); the first ``config.num_examples`` are used.
        initial_prompt: The prompt the search starts from (e.g. `PAPER_PROMPT`).
        renderer: Turns a prompt, an example and a reasoning chain into token ids.
        reasoner: Writes the reasoning chains.
        gradient_model: Proposes candidate tokens and takes their one-hot gradients.
        config: The search's settings (default: the paper's).
        on_step: Called after every step with its record.
        progress: Show a progress bar, labelled ``desc``.
        scorer: Replaces the paper's teacher-forced selection score (e.g. a task metric on the
            outputs the reasoning leads to); it receives each example with its rendering.
        reasoning_cache: Reasoning chains by (prompt ids, example index); a persistent one makes
            a run resumable.
        state: A `SearchState` that ``on_checkpoint`` received: the run continues from it.
        on_checkpoint: Called with the state after the setup and after every step.
        desc: The progress bar's label.

    Returns:
        The best prompts by training score, with every step's record.
    """
    config = config or GreaterConfig()
    examples = list(examples)[: config.num_examples]
    if len(examples) < 2:
        raise ValueError(
            f"GReaTer needs at least 2 training examples (it intersects the proposals of several "
            f"examples), got {len(examples)}. The paper uses 50."
        )
    if not initial_prompt.strip():
        raise ValueError(
            "The initial prompt is empty; start from a sentence such as "
            "'Use proper logical reasoning and think step by step.'"
        )
    search = _Search(config, examples, renderer, reasoner, gradient_model, reasoning_cache, scorer)
    rng = random.Random(config.seed)
    if state is None:
        state = _start(search, initial_prompt, rng)
        if on_checkpoint is not None:
            on_checkpoint(state)
    else:
        search.scores.update(state.scores)
        rng.setstate(state.rng_state)
        logger.info("Continuing the search after step %d of %d.", state.steps_done, config.steps)
    prompt, position, history = state.prompt, state.position, list(state.history)
    initial_score = search.score(state.initial)

    steps: Any = range(state.steps_done, config.steps)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=desc, unit="step", initial=state.steps_done, total=config.steps)
    for step in steps:
        # a bar shows each step; without one, a line does
        record = _step(search, prompt, position, step, rng, DEBUG if progress else INFO)
        history.append(record)
        prompt = tuple(prompt[:position]) + (record.selected,) + tuple(prompt[position + 1 :])
        ends_sentence = search.text((record.selected,)).strip().endswith(".")
        position, grow = advance(prompt, position, ends_sentence=ends_sentence, config=config)
        if grow:
            token = search.filler(prompt)
            if token is None:
                position = 0
            else:
                prompt = prompt + (token,)
                search.reason([prompt])
        if progress:
            best = search.top_prompts()[0][2]  # train: 1 - mistakes (the metric); loss: all of it
            steps.set_postfix(train=f"{1 - best.mistake_rate:.3f}", loss=f"{best.value:.3f}")
        if on_checkpoint is not None:
            on_checkpoint(
                SearchState(
                    step + 1,
                    prompt,
                    position,
                    rng.getstate(),
                    list(history),
                    dict(search.scores),
                    state.initial,
                    state.setup_seconds,
                )
            )
        if on_step is not None:
            on_step(record)

    top = search.top_prompts()
    best_text, best_ids, best_score = top[0]
    return GreaterResult(
        best_text,
        best_ids,
        best_score,
        search.text(state.initial),
        initial_score,
        top,
        history,
        state.setup_seconds,
    )


def _start(search: _Search, initial_prompt: str, rng: random.Random) -> SearchState:
    """Encode the initial prompt, reason with it and score it: the state before step 0."""
    renderer, examples = search.renderer, search.examples
    prompt = tuple(renderer.encode_prompt(initial_prompt, examples[0]))
    for ex in examples[1:]:
        renderer.render(prompt, ex)  # the same ids must hold in every example's context
    clock = time.perf_counter()
    search.reason([prompt])
    setup_seconds = {"reason": time.perf_counter() - clock}
    clock = time.perf_counter()
    initial_score = search.score(prompt)
    setup_seconds["score"] = time.perf_counter() - clock
    logger.info(
        "Initial prompt %r: train %.3f (loss %.4f)",
        search.text(prompt),
        1 - initial_score.mistake_rate,
        initial_score.value,
    )
    return SearchState(0, prompt, 0, rng.getstate(), [], dict(search.scores), prompt, setup_seconds)


def _step(
    search: _Search, prompt: Prompt, position: int, step: int, rng: random.Random, level: int
) -> StepRecord:
    config, seconds = search.config, {}
    clock = time.perf_counter()
    search.reason([prompt])  # cached after the previous step's selection
    rendered = search.rendered(prompt)
    seconds["reason"] = time.perf_counter() - clock

    clock = time.perf_counter()
    ranked = search.model.ranked_next_tokens(
        rendered, position, allowed=search.allowed, limit=config.max_top_k
    )
    previous = prompt[position - 1] if position > 0 else None
    candidates, k = propose(
        ranked, current=prompt[position], previous=previous, config=config, rng=rng
    )
    swap = lambda token: prompt[:position] + (token,) + prompt[position + 1 :]  # noqa: E731
    candidates = [c for c in candidates if c == prompt[position] or search.round_trips(swap(c))]
    seconds["propose"] = time.perf_counter() - clock

    clock = time.perf_counter()
    gradients = search.model.candidate_gradients(
        rendered,
        position,
        candidates,
        answer_temperature=config.answer_temperature,
        fluency_weight=config.fluency_weight,
    )
    shortlist = shortlist_by_gradient(candidates, gradients, config.shortlist)
    seconds["gradient"] = time.perf_counter() - clock

    clock = time.perf_counter()
    search.reason([swap(c) for c in shortlist])
    seconds["select_generation"] = time.perf_counter() - clock  # part of "select"
    choices = [*shortlist, prompt[position]] if config.keep_current else shortlist
    scores = {c: search.score(swap(c)) for c in choices}
    selected = select(scores)
    seconds["select"] = time.perf_counter() - clock

    after = swap(selected)
    record = StepRecord(
        step=step,
        position=position,
        prompt_before=search.text(prompt),
        top_k=k,
        candidates=candidates,
        gradients=gradients,
        shortlist=shortlist,
        scores={c: s.value for c, s in scores.items()},
        selected=selected,
        prompt_after=search.text(after),
        score_after=scores[selected].value,
        seconds=seconds,
    )
    logger.log(
        level,
        "step %d pos %d: %d candidates (k=%d) -> %r score %.4f",
        step,
        position,
        len(candidates),
        k,
        search.text((selected,)),
        record.score_after,
    )
    return record
