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

import inspect
import json
import logging
import math
import threading
import typing
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import dspy

from .adapters.base import GradientModel, RenderedExample
from .errors import GreaterError
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


def check_metric(
    metric: Callable[..., Any], example: dspy.Example, outputs: dict[str, Any]
) -> None:
    """Call ``metric`` once, before anything expensive, on ``example`` and a prediction made of
    its own labels (``outputs``: the output fields and their values), as GReaTer will call it:
    ``metric(example, prediction, trace)``. A metric that cannot be called so, or that returns
    None or something that is not a score, stops the run with what to change."""
    try:
        inspect.signature(metric).bind(example, None, None)
    except TypeError:
        raise GreaterError(
            f"The metric {getattr(metric, '__name__', metric)!r} cannot be called as "
            f"metric(example, prediction, trace) (its signature is "
            f"{inspect.signature(metric)}). Define it as "
            "def metric(example, prediction, trace=None) -> bool | float, as DSPy's optimizers "
            "expect."
        ) from None
    except ValueError:  # a callable without a signature (a builtin): call it and see
        pass
    prediction = dspy.Prediction(**outputs)
    try:
        result = metric(example, prediction, None)
    except Exception as exc:  # it may need what only a real prediction has; the search will say
        logger.warning(
            "The metric raised on a prediction made of example 0's own labels (%r); if it "
            "raises on every prediction, the run stops at its first evaluation.",
            exc,
        )
        return
    if result is None:
        raise GreaterError(
            "The metric returned None for example 0 (given its own labels as the prediction). "
            "Return a bool, a number, or a dspy.Prediction with a score."
        )
    try:
        value = metric_value(result)
    except (TypeError, ValueError) as exc:
        raise GreaterError(
            f"The metric returned {result!r} ({type(result).__name__}) for example 0, which is not "
            f"a score ({exc}). Return a bool, a number, or a dspy.Prediction with a score."
        ) from exc
    if not value:
        logger.warning(
            "The metric scores example 0's own labels as wrong (%r): check that it compares "
            "the prediction's fields with the example's.",
            result,
        )


def check_labels(examples: Sequence[dspy.Example], which: str, field: str, annotation: Any) -> None:
    """Each example's label for the output ``field`` is of the field's type (one of a closed
    set's choices): a label the adapter's output can never equal is refused before the search,
    naming the example, the field and the fix."""
    choices = typing.get_args(annotation) if typing.get_origin(annotation) is Literal else None
    for i, example in enumerate(examples):
        value = example[field]
        if choices is not None:
            if value not in choices:
                raise GreaterError(
                    f"Example {i} of the {which} has {field}={value!r}, not one of the field's "
                    f"choices {list(choices)}. Fix the label, or widen the field's type."
                )
        elif isinstance(annotation, type) and not _is_instance(value, annotation):
            raise GreaterError(
                f"Example {i} of the {which} has {field}={value!r} ({type(value).__name__}), "
                f"but the output field {field!r} is {annotation.__name__}: the model's answers "
                f"are read as {annotation.__name__} and would never equal it. Convert the "
                f"labels ({annotation.__name__}(...)) or type the field as "
                f"{type(value).__name__}."
            )


def made_up_outputs(example: dspy.Example, signature: Any | None) -> dict[str, Any]:
    """A prediction's fields made of ``example``'s own labels: every output field of
    ``signature`` (a placeholder of its type where the example has no such label), or, for a
    pipeline (None), the example's labels."""
    if signature is None:
        return dict(example.labels())
    return {
        name: example[name] if name in example else _placeholder(info.annotation)
        for name, info in signature.output_fields.items()
    }


def _placeholder(annotation: Any) -> Any:
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)[0]
    return annotation() if annotation in (str, int, float, bool) else "..."


def _is_instance(value: Any, annotation: type) -> bool:
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


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
class InstructionsEvaluator:
    """The whole program's mean metric on ``examples`` with one predictor's instructions replaced
    (the others as they stand in ``program``); cached in ``cache_file``, keyed by every
    predictor's instructions."""

    def __init__(
        self,
        program: dspy.Module,
        examples: list[dspy.Example],
        metric: Callable[..., Any],
        *,
        lm: Any,
        adapter: ForcedExtractionAdapter,
        num_threads: int,
        max_errors: int,
        cache_file: Path | None = None,
        progress: bool = False,
    ) -> None:
        self.program, self.examples, self.metric = program, examples, metric
        self.lm, self.adapter = lm, adapter
        self.num_threads, self.max_errors = num_threads, max_errors
        self.cache_file, self.progress = cache_file, progress
        self.scores: dict[str, float] = (
            json.loads(cache_file.read_text())
            if cache_file is not None and cache_file.exists()
            else {}
        )

    def __call__(self, predictor: str, instructions: str) -> float:
        key = json.dumps(
            {
                n: instructions if n == predictor else p.signature.instructions
                for n, p in self.program.named_predictors()
            },
            sort_keys=True,
        )
        if key not in self.scores:  # copy the program only to score it, not on a cache hit
            candidate = self.program.deepcopy()
            chosen = dict(candidate.named_predictors())[predictor]
            chosen.signature = chosen.signature.with_instructions(instructions)

            def metric(example: Any, prediction: Any, trace: Any = None) -> float:
                return metric_value(self.metric(example, prediction, trace))

            with dspy.context(lm=self.lm, adapter=self.adapter):
                result = dspy.Evaluate(
                    devset=self.examples,
                    metric=metric,
                    num_threads=self.num_threads,
                    display_progress=self.progress,
                    max_errors=self.max_errors,
                    failure_score=0.0,
                )(candidate)
            self.scores[key] = sum(s for _, _, s in result.results) / len(self.examples)
            if self.cache_file is not None:
                write_json_atomically(self.cache_file, self.scores)
        return self.scores[key]


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
        max_errors: int,
    ) -> None:
        self.metric, self.lm, self.adapter, self.renderer = metric, lm, adapter, renderer
        self.gradient_model, self.nll_weight = gradient_model, nll_weight
        self.loss_weight = loss_weight
        self.num_threads, self.max_errors = num_threads, max_errors
        self.errors, self.lock = 0, threading.Lock()
        self.first_error: tuple[dspy.Example, Exception] | None = None

    def _one(self, signature: Any, example: dspy.Example, reasoning: str) -> float:
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
            with self.lock:  # threads score examples at once
                self.errors += 1
                errors = self.errors
                self.first_error = self.first_error or (example, exc)
            if errors > self.max_errors:
                raise GreaterError(
                    f"The metric raised {errors} times (more than max_errors="
                    f"{self.max_errors}); the last time on {example}: {exc!r}. Fix the metric "
                    "or raise max_errors."
                ) from exc
            logger.warning("The metric raised on %s: %r (scored 0).", example, exc)
            return 0.0

    def __call__(
        self, prompt: Prompt, pairs: Sequence[tuple[dspy.Example, RenderedExample]]
    ) -> PromptScore:
        self.errors = 0  # max_errors holds per evaluation of a prompt, as in dspy.Evaluate
        self.first_error = None
        signature = self.renderer.signature.with_instructions(self.renderer.decode_prompt(prompt))
        decode = self.renderer.tokenizer.decode
        chains = [(ex, decode(list(r.ids[r.reasoning])).strip()) for ex, r in pairs]
        with ThreadPoolExecutor(max(1, min(self.num_threads, len(chains)))) as pool:
            scores = list(pool.map(lambda chain: self._one(signature, *chain), chains))
        if self.first_error is not None and self.errors == len(chains):
            example, exc = self.first_error  # every score a 0 that the metric never gave
            raise GreaterError(
                f"The metric raised on all {len(chains)} training examples, so no prompt can be "
                f"scored; the first time on {example}: {exc!r}. Fix the metric."
            ) from exc
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
