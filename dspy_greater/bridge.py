"""What a DSPy program means to the search: its metric, its examples, the engines behind its LMs,
each predictor's targets, and the selection scores.

- **Metrics**: a metric's result as a number, and an identity that holds across processes (a
  resumed run must use the same metric).
- **Examples**: checked before any expensive work; a validation split when none is given.
- **Engines**: which reasoner and which model folder are behind an LM (:func:`engines_for`).
- **Targets**: GReaTer's loss needs a gold value for the predictor's answer field. In a pipeline
  only the last stage has a label; the others get theirs as DSPy's bootstrapping does: run the
  program on the trainset under DSPy's tracing (``bootstrap_trace_data``), keep the runs whose
  final prediction passes the metric, and take each predictor's traced inputs and outputs as its
  examples. The stage that writes the program's answer falls back to the examples' own labels.
- **Scores**: the selection score of a prompt from the user's metric (:class:`AnswerMetricScorer`
  for one predictor, :class:`PipelineScorer` for a stage of a pipeline), and the program's score
  with one predictor's instructions replaced (:class:`InstructionsEvaluator`).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import math
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dspy

from .adapter import ForcedExtractionAdapter
from .engines.base import GradientModel, Reasoner, RenderedExample
from .errors import GreaterError
from .lm import ServerReasoner, local_reasoner
from .models import registered_dtype, resolve_model
from .renderers import AdapterRenderer, reasoning_and_answer
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


def metric_identity(metric: Any) -> Any:
    """What identifies a metric across processes (a resumed run must use the same one): a
    function by its module, name and code; a ``functools.partial`` by its function and
    arguments; a callable object by its class and attributes. Never a memory address."""
    if isinstance(metric, functools.partial):
        return {
            "partial": metric_identity(metric.func),
            "args": [_stable(a) for a in metric.args],
            "keywords": {k: _stable(v) for k, v in sorted(metric.keywords.items())},
        }
    if inspect.ismethod(metric):
        return {"method": metric_identity(metric.__func__), "of": _stable(metric.__self__)}
    code = getattr(metric, "__code__", None)
    if code is not None:
        return {
            "function": f"{metric.__module__}.{metric.__qualname__}",
            "code": _code_digest(code),
        }
    return {"callable": _stable(metric)}


def _stable(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON that is the same in every process for an equal value (objects inside
    objects by their type alone: an attribute may hold an LM)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_stable(item, depth) for item in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_stable(item, depth) for item in value), key=repr)
    if isinstance(value, dict):
        return {str(key): _stable(item, depth) for key, item in value.items()}
    if callable(value) and (hasattr(value, "__code__") or isinstance(value, functools.partial)):
        return metric_identity(value)
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    fields = getattr(value, "__dict__", None)
    return {kind: _stable(fields, depth + 1)} if fields is not None and depth == 0 else kind


def _code_digest(code: Any) -> str:
    """The code's bytecode, names and constants (nested code objects by their own digest)."""
    constants = [_code_digest(c) if inspect.iscode(c) else repr(_stable(c)) for c in code.co_consts]
    text = json.dumps([code.co_code.hex(), list(code.co_names), constants])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# -- examples -------------------------------------------------------------------------------------
def examples_digest(examples: Sequence[dspy.Example]) -> str:
    """A digest of the examples' fields (a resumed run must see the same examples)."""
    data = json.dumps([dict(ex.items()) for ex in examples], sort_keys=True, default=str)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


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


# -- engines --------------------------------------------------------------------------------------
@dataclass
class StageEngines:
    """What one predictor reasons and takes gradients with."""

    lm: Any
    reasoner: Reasoner
    model_folder: str  # the gradient model's folder
    gradient_model: GradientModel


def reasoner_and_folder(lm: Any, gradient_model: str | os.PathLike[str] | None) -> tuple[Any, str]:
    """The reasoner behind ``lm`` and the folder of its weights: a local engine's own (unless
    ``gradient_model`` names one), or, for a server, a reasoner through ``lm`` on the weights in
    ``gradient_model``."""
    if gradient_model is not None:
        gradient_model = resolve_model(gradient_model)  # a registered name or a folder
    reasoner = local_reasoner(lm)
    if reasoner is not None:
        path = gradient_model or getattr(reasoner, "model_path", None)
        if path is None:
            raise GreaterError(
                f"{type(reasoner).__name__} names no model folder; pass "
                "gradient_model= (the folder of the same weights)."
            )
        return reasoner, os.fspath(path)
    if gradient_model is None:
        raise GreaterError(
            f"The LM {getattr(lm, 'model', lm)!r} is not a local engine, so GReaTer cannot "
            "take gradients through it. Pass gradient_model= (a local folder of the same "
            "weights, for a vLLM server) or task_lm=local_lm(...) to optimize on a local proxy."
        )
    return ServerReasoner(lm, tokenizer=gradient_model), os.fspath(gradient_model)


def gradient_dtype(
    dtype: str | None, reasoner: Any, gradient_model: str | os.PathLike[str] | None
) -> str:
    """``dtype``, else the task engine's (the gradient then sees the weights the engine runs),
    else ``gradient_model``'s registered dtype, else float32. (A bfloat16 gradient model computes
    in float32 where bfloat16 is slow: :class:`~dspy_greater.engines.hf.HFGradientModel`.)"""
    engine_dtype = getattr(reasoner, "dtype", None)
    if dtype is not None:
        return dtype
    if isinstance(engine_dtype, str) and engine_dtype in ("float32", "bfloat16", "float16"):
        return engine_dtype
    return registered_dtype(gradient_model) if gradient_model is not None else "float32"


def configured_adapter() -> ForcedExtractionAdapter:
    """The configured adapter when it is a :class:`ForcedExtractionAdapter`, else one with the
    instructions in the system message (the placement a saved program carries)."""
    configured = dspy.settings.adapter
    return (
        configured if isinstance(configured, ForcedExtractionAdapter) else ForcedExtractionAdapter()
    )


def stage_engines(
    stages: Sequence[tuple[str, Any]],
    adapter: ForcedExtractionAdapter,
    *,
    task_lm: Any,
    gradient_model: str | os.PathLike[str] | None,
    dtype: str | None,
    device: str,
) -> dict[str, StageEngines]:
    """Each predictor's engines: behind ``task_lm`` (a proxy for all), else the predictor's own
    LM, else the configured one. Predictors that share an LM share its engines, and those on one
    folder and dtype its gradient model, loaded once per process (:func:`shared_gradient_model`).
    Each reasoner is checked against its gradient model."""
    from .engines.hf import shared_gradient_model

    lms = {name: task_lm or predictor.lm or dspy.settings.lm for name, predictor in stages}
    missing = [name for name, lm in lms.items() if lm is None]
    if missing:
        raise GreaterError(
            f"No LM for {missing}: configure one (dspy.configure(lm=local_lm())), set the "
            "predictors' lm, or pass task_lm=."
        )
    engines: dict[str, StageEngines] = {}
    for name, lm in lms.items():
        adapter.check_lm(lm)
        same_lm = [e for e in engines.values() if e.lm is lm]
        if same_lm:
            engines[name] = same_lm[0]
            continue
        reasoner, folder = reasoner_and_folder(lm, gradient_model)
        model = shared_gradient_model(
            folder, dtype=gradient_dtype(dtype, reasoner, gradient_model), device=device
        )
        engines[name] = StageEngines(lm, reasoner, folder, model)
        check_same_weights(engines[name])
    return engines


# -- targets --------------------------------------------------------------------------------------
@dataclass
class TracedRuns:
    """The program run once over a set of examples, traced."""

    rows: list[dict[str, Any]]  # bootstrap_trace_data rows of the runs that did not crash
    passing: list[dict[str, Any]]  # those whose score passes
    scores: list[float]  # the metric per example (failures and crashes score 0)

    @property
    def score(self) -> float:
        return sum(self.scores) / len(self.scores) if self.scores else math.nan


def trace_program(
    program: dspy.Module,
    examples: Sequence[dspy.Example],
    metric: Callable[..., Any],
    *,
    threshold: float | None,
    num_threads: int,
    max_errors: int,
) -> TracedRuns:
    """Run ``program`` on ``examples`` with DSPy's trace machinery. A forward that raises counts
    as a failure (as in ``dspy.Evaluate``); more than ``max_errors`` of them stop with the error."""
    from dspy.teleprompt.bootstrap_trace import FailedPrediction, bootstrap_trace_data

    def numeric(example: Any, prediction: Any, trace: Any = None) -> float:
        return metric_value(metric(example, prediction, trace))

    rows = bootstrap_trace_data(
        program,
        list(examples),
        numeric,
        num_threads=num_threads,
        raise_on_error=False,
        capture_crashes=True,
        failure_score=0.0,
    )
    crashed = [row for row in rows if isinstance(row["prediction"], FailedPrediction)]
    if len(crashed) > max_errors:
        raise GreaterError(
            f"The program raised on {len(crashed)} of {len(rows)} training examples (more than "
            f"max_errors={max_errors}); the last: {crashed[-1]['prediction'].completion_text}. "
            "Fix the program or raise max_errors."
        )
    for row in crashed:
        logger.warning(
            "The program failed on %s: %s (scored 0).",
            row["example"],
            row["prediction"].completion_text,
        )
    scores = [
        0.0 if isinstance(row["prediction"], FailedPrediction) else float(row["score"] or 0)
        for row in rows
    ]
    ran = [row for row in rows if not isinstance(row["prediction"], FailedPrediction)]
    passing = [row for row in ran if passes(float(row["score"] or 0), threshold)]
    return TracedRuns(ran, passing, scores)


def target_field(name: str, signature: Any) -> str:
    """The output field GReaTer targets in predictor ``name``: the one after the reasoning."""
    return reasoning_and_answer(signature, f"predictor {name!r}")[1]


def _calls(predictor: Any, rows: Sequence[dict[str, Any]]):
    """(row, inputs, outputs) of every call of ``predictor`` in ``rows``, in order."""
    for row in rows:
        for traced, inputs, outputs in row["trace"]:
            if traced is predictor:
                yield row, inputs, outputs


def _example(signature: Any, inputs: dict[str, Any], target: str, value: Any) -> dspy.Example:
    fields = {k: inputs[k] for k in signature.input_fields if k in inputs}
    return dspy.Example(**fields, **{target: value}).with_inputs(*fields)


def stage_examples(name: str, predictor: Any, runs: TracedRuns) -> list[dspy.Example]:
    """Every call of ``predictor`` in the passing runs (a predictor called twice in a forward
    contributes both calls), as examples: the traced inputs plus the traced target value."""
    signature = predictor.signature
    target = target_field(name, signature)
    examples = []
    for _, inputs, outputs in _calls(predictor, runs.passing):
        value = outputs.get(target) if hasattr(outputs, "get") else None
        if value is None or (isinstance(value, str) and not value.strip()):
            continue  # nothing to target
        examples.append(_example(signature, inputs, target, value))
    return examples


def final_predictor(runs: TracedRuns, field: str) -> Any | None:
    """The predictor that writes the program's output ``field``: in the traced runs, the last
    call whose ``field`` is the value the program returned (None if no run shows one)."""
    for row in runs.rows:
        value = row["prediction"].get(field) if hasattr(row["prediction"], "get") else None
        for predictor, _, outputs in reversed(row["trace"]):
            if hasattr(outputs, "get") and field in outputs and outputs.get(field) == value:
                return predictor
    return None


def label_examples(name: str, predictor: Any, runs: TracedRuns) -> list[dspy.Example]:
    """Every call of ``predictor`` in every run, passing or not, targeting the example's own
    label of the same name (for the stage that writes the program's final answer)."""
    signature = predictor.signature
    target = target_field(name, signature)
    return [
        _example(signature, inputs, target, row["example"][target])
        for row, inputs, _ in _calls(predictor, runs.rows)
        if target in row["example"]
    ]


def stage_targets(
    name: str, predictor: Any, traced: TracedRuns, trainset: Sequence[dspy.Example], needed: int
) -> tuple[list[dspy.Example], str, str | None]:
    """A pipeline stage's examples for the gradient loss, their source (``"traces"`` or
    ``"labels"``), and why the stage is skipped (None when it is not): the passing calls, or, for
    the stage that writes the program's answer when they are too few, its calls with the
    examples' own labels."""
    examples, source, skipped = stage_examples(name, predictor, traced), "traces", None
    if len(examples) < needed:
        target = target_field(name, predictor.signature)
        labelled = []
        if predictor is final_predictor(traced, target) and all(target in ex for ex in trainset):
            labelled = label_examples(name, predictor, traced)
        if len(labelled) >= needed:
            logger.warning(
                "Only %d passing calls of %s; its targets are the examples' own "
                "labels instead (%d calls).",
                len(examples),
                name,
                len(labelled),
            )
            examples, source = labelled, "labels"
        else:
            skipped = (
                f"{len(examples)} passing calls in {len(traced.passing)} passing runs "
                f"(of {len(trainset)}); it needs {needed}. Add training examples."
            )
    return examples, source, skipped


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
        signature = self.renderer.signature.with_instructions(self.renderer.decode_prompt(prompt))
        decode = self.renderer.tokenizer.decode
        chains = [(ex, decode(list(r.ids[r.reasoning])).strip()) for ex, r in pairs]
        with ThreadPoolExecutor(max(1, min(self.num_threads, len(chains)))) as pool:
            scores = list(pool.map(lambda chain: self._one(signature, *chain), chains))
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


def check_same_weights(engines: StageEngines) -> None:
    """Refuse a reasoner that is not the gradient model's weights; say so, and go on, where the
    reasoner cannot report log-probabilities (a server)."""
    from .engines.same_model import check_same_model

    try:
        check_same_model(engines.reasoner, engines.gradient_model)
    except NotImplementedError as exc:  # a server reports no log-probabilities; a bug raises
        logger.warning(
            "Could not check that the reasoner is the gradient model's weights "
            "(%s); check it with a local reasoner on the same folder.",
            exc,
        )
