"""A DSPy program as the GReaTer search sees it: the contract between the two.

The search (`dspy_greater.search`) knows no DSPy. It optimizes the token ids of one prompt
against a loss and a scorer. This module states what a DSPy program owes it, and what it gets
back, in the way GEPA's ``core/adapter.py`` states its adapter protocol:

- **What is optimized.** The program's named predictors (`predictors_to_optimize`), each
  one's ``signature.instructions`` from its starting text (`starting_instructions`); the
  slot is rendered by `AdapterRenderer` exactly as DSPy sends it.
- **Examples.** ``dspy.Example`` objects with the program's inputs and, for the gradient, the
  label of the predictor's answer field, checked before any expensive work
  (`checked_examples`); a validation split when none is given (`split_validation`).
- **Targets.** The gold value the gradient loss needs: the trainset's labels for a one-predictor
  program, traced outputs of passing runs for a pipeline's stages
  (`dspy_greater.targets`).
- **Scoring.** The user's metric, read as a number (`metric_value`; bool, number or a
  prediction with a ``score``), is the selection signal: `AnswerMetricScorer` scores a
  one-predictor prompt on the outputs the adapter completes after the search's own reasoning;
  `PipelineScorer` scores a stage's prompt by the whole program's metric.
- **Evaluation.** `InstructionsEvaluator` is the program's mean metric with one
  predictor's instructions replaced: the validation choice among the search's best prompts.
- **What comes back.** New instructions per predictor; the teleprompter writes them into a deep
  copy of the program and nothing else changes.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dspy

from .adapters.base import GradientModel, RenderedExample
from .errors import EvaluationFailed, GreaterError
from .forced_extraction import ForcedExtractionAdapter
from .renderers import AdapterRenderer
from .rundir import write_json_atomically
from .search import Prompt, PromptScore

logger = logging.getLogger(__name__)


# -- metrics --------------------------------------------------------------------------------------
def metric_value(result: Any) -> float:
    """A metric's result as a number: bool, int, float, or anything with a ``score``
    (``dspy.Prediction(score=..., feedback=...)``)."""
    if hasattr(result, "score"):
        result = result.score
    if isinstance(result, dict) and "score" in result:
        result = result["score"]
    value = float(result)
    if math.isnan(value):
        raise ValueError("the metric returned NaN")
    return value


def passes(score: float | None, threshold: float | None) -> bool:
    """DSPy bootstrapping's rule: ``score >= threshold`` if a threshold is set, else truthy."""
    if score is None:
        return False
    return score >= threshold if threshold is not None else bool(score)


# -- examples -------------------------------------------------------------------------------------
def checked_examples(
    which: str, examples: Sequence[Any], inputs: Sequence[str] | None, label: str | None
) -> list[dspy.Example]:
    """``examples`` with the inputs the program needs (``inputs``: the one predictor's input
    fields; None: the examples' own ``with_inputs``) and the label the gradient targets; a
    ``ValueError`` that names the example otherwise."""
    checked = []
    for i, example in enumerate(examples):
        if inputs is None and not example._input_keys:
            raise ValueError(
                f"Example {i} of the {which} does not say which fields are the "
                f"program's inputs: use dspy.Example(...).with_inputs(...). "
                f"{example}"
            )
        missing = [k for k in inputs or [] if k not in example]
        if missing:
            raise ValueError(
                f"Example {i} of the {which} lacks the input field(s) {missing} "
                f"that the program needs: {example}"
            )
        if label is not None and label not in example:
            raise ValueError(
                f"Example {i} of the {which} has no {label!r}: GReaTer needs it "
                f"as the gradient's target (and the metric compares it)."
            )
        if not example._input_keys:
            example = example.with_inputs(*(inputs or []))
        checked.append(example)
    return checked


def split_validation(
    trainset: list[dspy.Example],
) -> tuple[list[dspy.Example], list[dspy.Example]]:
    """(train, validation) when no valset is given: the last third of the trainset validates."""
    if len(trainset) < 3:
        raise ValueError(
            "Without a valset GReaTer splits one off the trainset, which needs "
            f"at least 3 examples; got {len(trainset)}. Pass valset=."
        )
    held = max(1, len(trainset) // 3)
    logger.warning(
        "No valset given: using the last %d of the %d training examples for validation.",
        held,
        len(trainset),
    )
    return trainset[:-held], trainset[-held:]


# -- scores ---------------------------------------------------------------------------------------
class Failures:
    """The examples that failed over a whole compile (the program or the metric raised on them),
    each counted once however often it is scored, against ``max_errors``: the run stops once
    more than ``max_errors`` examples have failed. (An evaluation in which every example failed
    means nothing and stops at once: `all_failed`.)"""

    def __init__(self, max_errors: int) -> None:
        self.max_errors = max_errors
        self.failed: set[str] = set()
        self.lock = threading.Lock()

    def add(self, example: Any, exc: BaseException, what: str) -> None:
        """Count a failure on ``example``; a `GreaterError` once more than ``max_errors``
        examples have failed."""
        key = json.dumps(dict(example.items()), sort_keys=True, default=str)
        with self.lock:  # threads score examples at once
            new = key not in self.failed
            self.failed.add(key)
            count = len(self.failed)
        if count > self.max_errors:
            raise GreaterError(
                f"{what} failed on {count} examples in this run (more than max_errors="
                f"{self.max_errors}); the last time on {example}: {exc!r}. Fix it, or raise "
                "max_errors."
            ) from exc
        if new:
            logger.warning("%s failed on %s: %r (scored 0).", what, example, exc)

    @staticmethod
    def all_failed(n: int, which: str, first: tuple[Any, BaseException]) -> EvaluationFailed:
        example, exc = first
        return EvaluationFailed(
            f"Every one of the {n} {which} failed, so no prompt can be scored; the first on "
            f"{example}: {exc!r}. Fix the metric or the program (or start its engine), and "
            "run again."
        )


class InstructionsEvaluator:
    """The whole program's mean metric on ``examples`` with one predictor's instructions replaced
    (the others as they stand in ``program``); cached in ``cache_file``, keyed by every
    predictor's instructions. Failures count in ``failures`` (over the run)."""

    def __init__(
        self,
        program: dspy.Module,
        examples: list[dspy.Example],
        metric: Callable[..., Any],
        *,
        lm: Any,
        adapter: ForcedExtractionAdapter,
        num_threads: int,
        failures: Failures,
        which: str = "validation examples",
        cache_file: Path | None = None,
        progress: bool = False,
    ) -> None:
        self.program, self.examples, self.metric = program, examples, metric
        self.lm, self.adapter = lm, adapter
        self.num_threads, self.failures, self.which = num_threads, failures, which
        self.cache_file, self.progress = cache_file, progress
        # per question, in the examples' order (a mean alone in runs from before 0.3)
        self.scores: dict[str, list[float] | float] = (
            json.loads(cache_file.read_text())
            if cache_file is not None and cache_file.exists()
            else {}
        )

    def _key(self, predictor: str, instructions: str) -> str:
        return json.dumps(
            {
                n: instructions if n == predictor else p.signature.instructions
                for n, p in self.program.named_predictors()
            },
            sort_keys=True,
        )

    def __call__(self, predictor: str, instructions: str) -> float:
        return self.score_all(predictor, [instructions])[instructions]

    def score_all(self, predictor: str, texts: Sequence[str]) -> dict[str, float]:
        """Each of ``texts`` as ``predictor``'s instructions, scored: those not cached under one
        progress bar (with ``progress``) over all their examples."""
        missing = [t for t in dict.fromkeys(texts) if self._key(predictor, t) not in self.scores]
        bar = None
        if self.progress and missing:
            from tqdm.auto import tqdm

            prompts = "1 prompt" if len(missing) == 1 else f"{len(missing)} prompts"
            bar = tqdm(
                total=len(missing) * len(self.examples),
                desc=f"Validating {prompts}",
                unit="example",
            )
        try:
            for text in missing:
                self.scores[self._key(predictor, text)] = self._score(predictor, text, bar)
                if self.cache_file is not None:
                    write_json_atomically(self.cache_file, self.scores)
        finally:
            if bar is not None:
                bar.close()
        return {text: _mean(self.scores[self._key(predictor, text)]) for text in texts}

    def per_question(self, predictor: str, text: str) -> list[float] | None:
        """Each example's score with ``text`` (scored before), or None where only the mean was
        kept (a run directory from before per-question scores)."""
        scores = self.scores[self._key(predictor, text)]
        return scores if isinstance(scores, list) else None

    def _score(self, predictor: str, instructions: str, bar: Any) -> list[float]:
        from dspy.utils.parallelizer import ParallelExecutor

        candidate = self.program.deepcopy()
        chosen = dict(candidate.named_predictors())[predictor]
        chosen.signature = chosen.signature.with_instructions(instructions)
        failed: list[tuple[Any, BaseException]] = []  # list.append is atomic
        stop: list[GreaterError] = []  # more than max_errors over the run

        def failure(example: dspy.Example, exc: Exception, what: str) -> float:
            failed.append((example, exc))
            try:
                self.failures.add(example, exc, what)
            except GreaterError as error:
                stop.append(error)
                raise  # the executor then cancels the other examples
            return 0.0

        def run(example: dspy.Example) -> float:
            try:
                try:
                    prediction = candidate(**example.inputs())
                except Exception as exc:
                    return failure(example, exc, "The program")
                try:
                    return metric_value(self.metric(example, prediction, None))
                except Exception as exc:
                    return failure(example, exc, "The metric")
            finally:
                if bar is not None:
                    bar.update(1)

        # DSPy's executor carries the caller's settings (dspy.context) into its threads; a long
        # chain is not a straggler to run twice (greedy: the same answer).
        executor = ParallelExecutor(
            num_threads=max(1, min(self.num_threads, len(self.examples))),
            max_errors=1,
            disable_progress_bar=True,
            timeout=_NEVER,
        )
        with dspy.context(lm=self.lm, adapter=self.adapter):
            try:
                scores = executor.execute(run, self.examples)
            except Exception:
                if stop:
                    raise stop[0] from None
                raise
        if len(failed) >= len(self.examples):
            raise Failures.all_failed(len(self.examples), self.which, failed[0])
        return [float(score) for score in scores]


_NEVER = 7 * 24 * 3600  # seconds


def _mean(scores: list[float] | float) -> float:
    return sum(scores) / len(scores) if isinstance(scores, list) else float(scores)


def _prompt_nll(
    gradient_model: GradientModel,
    pairs: Sequence[tuple[Any, RenderedExample]],
    adapter: ForcedExtractionAdapter,
) -> float:
    """The prompt's mean NLL: on one example when the context before it is shared by all (the
    instructions in the system message)."""
    rendered = [r for _, r in pairs]
    return gradient_model.prompt_nll(rendered[:1] if adapter.instructions == "system" else rendered)


class AnswerMetricScorer:
    """The selection score of a one-predictor program's prompt: 1 - the mean metric over the
    training batch, on the outputs the adapter generates after the search's own reasoning (no
    extra reasoning call), + ``nll_weight`` * the prompt's mean NLL, + ``loss_weight`` * the
    mean teacher-forced answer loss."""

    def __init__(
        self,
        *,
        metric: Callable[..., Any],
        lm: Any,
        adapter: ForcedExtractionAdapter,
        renderer: AdapterRenderer,
        gradient_model: GradientModel,
        nll_weight: float,
        loss_weight: float = 0.0,
        num_threads: int,
        failures: Failures,
    ) -> None:
        self.metric, self.lm, self.adapter, self.renderer = metric, lm, adapter, renderer
        self.gradient_model, self.nll_weight = gradient_model, nll_weight
        self.loss_weight = loss_weight
        self.num_threads, self.failures = num_threads, failures

    def _one(
        self,
        signature: Any,
        example: dspy.Example,
        reasoning: str,
        failed: list[tuple[Any, BaseException]],
    ) -> float:
        inputs = {k: example[k] for k in signature.input_fields}
        values = self.adapter.complete(
            self.lm,
            signature,
            list(self.renderer.demos),
            inputs,
            {self.renderer.reasoning_field: reasoning},
        )
        try:
            return metric_value(self.metric(example, dspy.Prediction(**values), None))
        except Exception as exc:  # counted as a failure, as dspy.Evaluate does
            failed.append((example, exc))
            self.failures.add(example, exc, "The metric")
            return 0.0

    def __call__(
        self, prompt: Prompt, pairs: Sequence[tuple[dspy.Example, RenderedExample]]
    ) -> PromptScore:
        signature = self.renderer.signature.with_instructions(self.renderer.decode_prompt(prompt))
        decode = self.renderer.tokenizer.decode
        chains = [(ex, decode(list(r.ids[r.reasoning])).strip()) for ex, r in pairs]
        failed: list[tuple[Any, BaseException]] = []
        with ThreadPoolExecutor(max(1, min(self.num_threads, len(chains)))) as pool:
            scores = list(pool.map(lambda c: self._one(signature, c[0], c[1], failed), chains))
        if len(failed) == len(chains):  # every score a 0 that the metric never gave
            raise Failures.all_failed(len(chains), "training examples", failed[0])
        mistakes = 1.0 - sum(scores) / len(scores)
        nll = _prompt_nll(self.gradient_model, pairs, self.adapter)
        loss = _answer_loss(self.gradient_model, pairs) if self.loss_weight else 0.0
        return PromptScore.of(mistakes, nll, self.nll_weight, loss, self.loss_weight)


class PipelineScorer:
    """The selection score of one stage's prompt in a multi-stage program: 1 - the whole
    program's mean metric on the training batch with that prompt (a change in one stage is
    judged by its effect on the end result), + ``nll_weight`` * the prompt's mean NLL, +
    ``loss_weight`` * the stage's mean teacher-forced loss on its targets."""

    def __init__(
        self,
        *,
        evaluate: InstructionsEvaluator,
        stage: str,
        renderer: AdapterRenderer,
        gradient_model: GradientModel,
        nll_weight: float,
        loss_weight: float = 0.0,
    ) -> None:
        self.evaluate, self.stage, self.renderer = evaluate, stage, renderer
        self.gradient_model, self.nll_weight = gradient_model, nll_weight
        self.loss_weight = loss_weight

    def __call__(
        self, prompt: Prompt, pairs: Sequence[tuple[dspy.Example, RenderedExample]]
    ) -> PromptScore:
        mistakes = 1.0 - self.evaluate(self.stage, self.renderer.decode_prompt(prompt))
        nll = _prompt_nll(self.gradient_model, pairs, self.evaluate.adapter)
        loss = _answer_loss(self.gradient_model, pairs) if self.loss_weight else 0.0
        return PromptScore.of(mistakes, nll, self.nll_weight, loss, self.loss_weight)


def _answer_loss(
    gradient_model: GradientModel, pairs: Sequence[tuple[Any, RenderedExample]]
) -> float:
    """The mean teacher-forced loss of the targets after each example's own reasoning."""
    results = gradient_model.score([r for _, r in pairs])
    return sum(r.answer_loss for r in results) / len(results)


# -- the program ----------------------------------------------------------------------------------
def predictors_to_optimize(program: dspy.Module, only: str | None) -> list[tuple[str, Any]]:
    """The program's named predictors, or only the one named ``only``."""
    named = program.named_predictors()
    if not named:
        raise ValueError(
            "The program has no predictors (dspy.Predict / ChainOfThought) to optimize."
        )
    if only is None:
        return named
    for name, predictor in named:
        if name == only:
            return [(name, predictor)]
    raise ValueError(f"No predictor named {only!r}; the program has {[n for n, _ in named]}.")


def starting_instructions(
    stages: list[tuple[str, Any]], given: str | dict[str, str] | None
) -> dict[str, str]:
    """Each predictor's starting instructions: ``given`` (one string for a one-predictor program,
    or ``{predictor: instructions}``), else its own."""
    if given is None:
        given = {}
    elif isinstance(given, str):
        if len(stages) > 1:
            raise ValueError(
                "initial_instructions= as one string sets one predictor's start; "
                "this program has several: pass {name: instructions} or "
                "predictor=NAME."
            )
        given = {stages[0][0]: given}
    unknown = sorted(set(given) - {name for name, _ in stages})
    if unknown:
        raise ValueError(
            f"initial_instructions names {unknown}, which are not among the "
            f"predictors optimized: {[n for n, _ in stages]}."
        )
    return {name: given.get(name) or predictor.signature.instructions for name, predictor in stages}


def describe(signature: Any) -> str:
    """``inputs -> outputs`` of a signature (part of a run's identity)."""
    return f"{', '.join(signature.input_fields)} -> {', '.join(signature.output_fields)}"
