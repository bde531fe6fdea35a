"""GReaTer as a DSPy optimizer: ``GReaTer(metric=...).compile(program, trainset=...)``.

The slot is the predictor's ``signature.instructions`` as :class:`ForcedExtractionAdapter` sends
them; the reasoning comes from the program's own LM (its local engine); the gradients from the
same weights in ``transformers``; candidates are selected by the user's metric on the outputs the
program's adapter generates, plus the paper's readability term; the final choice is made on the
validation set among the best prompts and the starting instructions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import dspy
from dspy.teleprompt import Teleprompter

from .errors import GreaterError
from .extract import AdapterRenderer, ForcedExtractionAdapter
from .rundir import RunDir, write_json_atomically
from .search import GreaterConfig, GreaterResult, Prompt, PromptScore, StepRecord, run_greater

logger = logging.getLogger(__name__)

Budget = Literal["light", "medium", "heavy"]
# Search settings per budget; "heavy" is the paper's (100 steps over 50 examples).
BUDGETS: dict[str, dict[str, Any]] = {
    "light": dict(steps=8, num_examples=8, top_k=10, num_subsets=4, subset_size=3,
                  max_reasoning_tokens=128),
    "medium": dict(steps=25, num_examples=16, top_k=20, num_subsets=5, subset_size=4,
                   max_reasoning_tokens=256),
    "heavy": {},
}


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


@dataclass
class GReaTerRun:
    """What one compile did; also in ``run_dir/run.json``. Attached to the compiled program as
    ``compiled.greater_run`` (DSPy does not save it; the run directory keeps it)."""

    run_dir: Path
    predictor: str
    placement: str
    model: str
    proxy_model: bool  # the gradients and reasoning ran on task_lm, not the program's LM
    start_instructions: str
    instructions: str
    validation: dict[str, float]  # candidate instructions -> validation score
    validation_size: int
    validation_from_trainset: bool
    train_scores: list[float]  # the metric on the training batch after each step
    search: GreaterResult

    @property
    def history(self) -> list[StepRecord]:
        """Each step's record (candidates, gradient ranks, scores, timings)."""
        return self.search.history


class _MetricScorer:
    """The selection score of a prompt: 1 - mean metric over the training batch, on the outputs
    the adapter generates after the search's reasoning, + weight * the prompt's mean NLL."""

    def __init__(self, *, metric: Callable, examples: Sequence[dspy.Example], lm: Any,
                 adapter: ForcedExtractionAdapter, renderer: AdapterRenderer, gradient_model: Any,
                 nll_weight: float, num_threads: int, max_errors: int) -> None:
        self.metric, self.examples, self.lm, self.adapter = metric, list(examples), lm, adapter
        self.renderer, self.model = renderer, gradient_model
        self.nll_weight, self.num_threads, self.max_errors = nll_weight, num_threads, max_errors
        self.errors = 0

    def _one(self, signature: Any, example: dspy.Example, reasoning: str) -> float:
        inputs = {k: example[k] for k in signature.input_fields}
        values = self.adapter.complete(self.lm, signature, list(self.renderer.demos), inputs,
                                       {self.renderer.reasoning_field: reasoning})
        prediction = dspy.Prediction(**values)
        try:
            return metric_value(self.metric(example, prediction, None))
        except Exception as exc:  # counted as a failure, as dspy.Evaluate does
            self.errors += 1
            if self.errors > self.max_errors:
                raise GreaterError(
                    f"The metric raised {self.errors} times (more than max_errors="
                    f"{self.max_errors}); the last time on {example}: {exc!r}. Fix the metric "
                    "or raise max_errors.") from exc
            logger.warning("The metric raised on %s: %r (scored 0).", example, exc)
            return 0.0

    def prompt_nll(self, rendered: Sequence[Any]) -> float:
        """Mean NLL of the prompt tokens given what precedes them (a forward pass over the
        context up to the slot only; one example when the context before the slot is shared)."""
        items = rendered[:1] if self.adapter.instructions == "system" else rendered
        nlls = []
        for item in items:
            logprobs = self.model.prompt_logprobs(item.ids[: item.slot.stop])
            slot = logprobs[item.slot.start - 1 : item.slot.stop - 1]
            nlls.append(-sum(slot) / len(slot))
        return sum(nlls) / len(nlls)

    def __call__(self, prompt: Prompt, rendered: Sequence[Any]) -> PromptScore:
        text = self.renderer.decode_prompt(prompt)
        signature = self.renderer.signature.with_instructions(text)
        tokenizer = self.renderer.tokenizer
        chains = [tokenizer.decode(list(item.ids[item.reasoning])).strip() for item in rendered]
        with ThreadPoolExecutor(max(1, min(self.num_threads, len(chains)))) as pool:
            scores = list(pool.map(lambda args: self._one(signature, *args),
                                   zip(self.examples, chains)))
        mistakes = 1.0 - sum(scores) / len(scores)
        nll = self.prompt_nll(rendered)
        return PromptScore(mistakes, nll, mistakes + self.nll_weight * nll)


class GReaTer(Teleprompter):
    """GReaTer (gradients over reasoning) as a drop-in DSPy optimizer for one predictor's
    instructions, on a local open model.

    ``metric(example, prediction, trace=None)`` returns a bool, a number or a prediction with a
    ``score``. ``auto`` picks a budget (``"light"`` runs in minutes on a CPU, ``"heavy"`` is the
    paper's); ``steps`` or a full ``config`` (:class:`GreaterConfig`) override it. The program's
    LM (``task_lm`` to optimize on a local proxy instead) must be a local engine
    (:func:`dspy_greater.adapters.lm.local_lm`) or a vLLM server, and ``gradient_model`` (a model
    folder; by default the local engine's) the same weights. The instructions are rendered as
    ``adapter`` sends them (a :class:`ForcedExtractionAdapter`; by default the configured one, or
    one with the instructions in the system message, the placement a saved program carries).
    ``predictor`` names the predictor to optimize in a program with several; ``initial_instructions``
    starts elsewhere than the predictor's own; ``run_dir`` keeps the run (default: a temp dir);
    ``on_step`` is called with each step's record after it is saved.
    """

    def __init__(
        self,
        metric: Callable[..., Any],
        *,
        auto: Budget | None = "light",
        steps: int | None = None,
        config: GreaterConfig | None = None,
        gradient_model: str | os.PathLike[str] | None = None,
        task_lm: Any = None,
        adapter: ForcedExtractionAdapter | None = None,
        initial_instructions: str | None = None,
        predictor: str | None = None,
        run_dir: str | os.PathLike[str] | None = None,
        num_threads: int = 16,
        max_errors: int | None = None,
        seed: int = 0,
        dtype: str = "float32",
        validate_every_step: bool = True,
        progress: bool = True,
        on_step: Callable[[StepRecord], None] | None = None,
    ) -> None:
        super().__init__()
        if metric is None or not callable(metric):
            raise TypeError("GReaTer needs a metric: metric(example, prediction, trace=None) -> "
                            "bool | float (or a prediction with a score).")
        if auto is not None and auto not in BUDGETS:
            raise ValueError(f"auto must be one of {sorted(BUDGETS)} or None, got {auto!r}.")
        self.metric = metric
        self.auto, self.steps, self.config = auto, steps, config
        self.gradient_model, self.task_lm, self.adapter = gradient_model, task_lm, adapter
        self.initial_instructions, self.predictor = initial_instructions, predictor
        self.run_dir, self.num_threads, self.max_errors = run_dir, num_threads, max_errors
        self.seed, self.dtype = seed, dtype
        self.validate_every_step, self.progress, self.on_step = validate_every_step, progress, on_step

    # -- settings ---------------------------------------------------------------------------
    def search_config(self) -> GreaterConfig:
        if self.config is not None:
            config = self.config
        else:
            config = GreaterConfig(**BUDGETS[self.auto or "light"], seed=self.seed)
        if self.steps is not None:
            config = GreaterConfig(**{**asdict(config), "steps": self.steps})
        return config

    # -- compile ----------------------------------------------------------------------------
    def compile(self, student: dspy.Module, *, trainset: list[dspy.Example],
                teacher: Any = None, valset: list[dspy.Example] | None = None,
                resume: bool = False, run_dir: str | os.PathLike[str] | None = None,
                **kwargs: Any) -> dspy.Module:
        """A copy of ``student`` whose predictor's instructions GReaTer optimized (nothing else
        changes). ``resume=True`` continues the run in ``run_dir`` where it stopped."""
        if kwargs:
            raise TypeError(f"GReaTer.compile got unexpected arguments {sorted(kwargs)}.")
        if teacher is not None:
            logger.warning("GReaTer uses no teacher program; ignoring teacher=.")
        if not trainset:
            raise ValueError("The trainset is empty; GReaTer needs labelled examples (the paper "
                             "uses 50; the light budget uses 8 for the search).")
        program = student.deepcopy()
        name, predictor = self._pick_predictor(program)
        signature = predictor.signature
        outputs = list(signature.output_fields)
        if len(outputs) != 2:
            raise ValueError(
                f"GReaTer reasons in one output field and answers in another; predictor {name!r} "
                f"has output fields {outputs}. Wrap it in dspy.ChainOfThought.")
        config = self.search_config()
        trainset = self._checked("trainset", trainset, signature, outputs[1])
        split_off = valset is None
        if split_off:
            trainset, valset = self._split(trainset, config)
        else:
            valset = self._checked("valset", valset, signature, outputs[1])

        lm = self.task_lm or predictor.lm or dspy.settings.lm
        if lm is None:
            raise GreaterError("No LM: configure one (dspy.configure(lm=local_lm())), set the "
                               "predictor's lm, or pass task_lm=.")
        adapter = self.adapter or (dspy.settings.adapter if isinstance(
            dspy.settings.adapter, ForcedExtractionAdapter) else ForcedExtractionAdapter())
        adapter.check_lm(lm)
        reasoner, model_path = self._reasoner(lm)
        gradient = self._gradient_model(model_path)
        renderer = AdapterRenderer(signature, gradient.tokenizer, adapter,
                                   demos=list(predictor.demos), constrained=adapter.constrains(lm))
        original = self.initial_instructions or signature.instructions
        # The slot is one line: ChatAdapter indents further lines, which the search cannot edit.
        start = " ".join(original.split())
        if start != original:
            logger.info("GReaTer optimizes one line of instructions; starting from %r.", start)

        folder = Path(run_dir or self.run_dir or tempfile.mkdtemp(prefix="greater-run-"))
        identity = {"search": asdict(config), "predictor": name, "signature": _describe(signature),
                    "start": original, "placement": adapter.instructions, "model": model_path,
                    "trainset": _digest(trainset), "valset": _digest(valset),
                    "metric": getattr(self.metric, "__qualname__", repr(self.metric))}
        run = RunDir(folder, identity, resume=resume)
        logger.info("GReaTer run directory: %s", folder)
        max_errors = self.max_errors if self.max_errors is not None else dspy.settings.max_errors
        scorer = _MetricScorer(metric=self.metric, examples=trainset[: config.num_examples], lm=lm,
                               adapter=adapter, renderer=renderer, gradient_model=gradient,
                               nll_weight=config.selection_nll_weight,
                               num_threads=self.num_threads, max_errors=max_errors)
        evaluate = _Validator(program, name, valset, self.metric, lm, adapter, self.num_threads,
                              max_errors, run)

        def after_step(record: StepRecord) -> None:
            if self.validate_every_step:
                evaluate(record.prompt_after)
            if self.on_step is not None:
                self.on_step(record)

        try:
            result = run_greater(
                trainset, initial_prompt=start, renderer=renderer, reasoner=reasoner,
                gradient_model=gradient, config=config, scorer=scorer,
                reasoning_cache=run.generations, state=run.state() if resume else None,
                on_checkpoint=run.save_state, on_step=after_step, progress=self.progress)
            candidates = list(dict.fromkeys([original, start,
                                             *(text for text, _, _ in result.top_prompts)]))
            validation = {text: evaluate(text) for text in candidates}
            scored = {renderer.decode_prompt(ids): s for ids, s in run.state().scores.items()}
            train_scores = [1.0 - scored[r.prompt_after].mistake_rate for r in result.history]
        finally:
            run.close()
        best = max(candidates, key=lambda text: (validation[text], -candidates.index(text)))
        predictor.signature = signature.with_instructions(best)
        report = GReaTerRun(
            run_dir=folder, predictor=name, placement=adapter.instructions, model=model_path,
            proxy_model=self.task_lm is not None, start_instructions=original, instructions=best,
            validation=validation, validation_size=len(valset),
            validation_from_trainset=split_off, train_scores=train_scores, search=result)
        run.save_result({"instructions": best, "start_instructions": original,
                         "validation": validation, "validation_size": len(valset),
                         "validation_from_trainset": split_off, "train_scores": train_scores,
                         "validation_per_step": evaluate.per_step(result.history)})
        _plot(folder / "scores.png", train_scores, evaluate.per_step(result.history),
              validation[original])
        n = len(valset)
        logger.info("GReaTer: %r -> %r; validation %.3f ± %.3f -> %.3f (n=%d)", original, best,
                    validation[original], _se(validation[original], n), validation[best], n)
        program.greater_run = report
        return program

    # -- pieces ------------------------------------------------------------------------------
    def _pick_predictor(self, program: dspy.Module) -> tuple[str, Any]:
        named = program.named_predictors()
        if not named:
            raise ValueError("The program has no predictors (dspy.Predict / ChainOfThought) to "
                             "optimize.")
        if self.predictor is not None:
            for name, predictor in named:
                if name == self.predictor:
                    return name, predictor
            raise ValueError(f"No predictor named {self.predictor!r}; the program has "
                             f"{[n for n, _ in named]}.")
        if len(named) > 1:
            raise ValueError(f"The program has {len(named)} predictors {[n for n, _ in named]}; "
                             "GReaTer optimizes one: pick it with GReaTer(predictor=NAME).")
        return named[0]

    def _checked(self, which: str, examples: list[Any], signature: Any, label: str
                 ) -> list[dspy.Example]:
        checked = []
        for i, example in enumerate(examples):
            missing = [k for k in signature.input_fields if k not in example]
            if missing:
                raise ValueError(f"Example {i} of the {which} lacks the input field(s) {missing} "
                                 f"that the signature {_describe(signature)!r} needs: {example}")
            if label not in example:
                raise ValueError(f"Example {i} of the {which} has no {label!r}: GReaTer needs it "
                                 f"as the gradient's target (and the metric compares it).")
            if not example._input_keys:
                example = example.with_inputs(*signature.input_fields)
            checked.append(example)
        return checked

    def _split(self, trainset: list[dspy.Example], config: GreaterConfig
               ) -> tuple[list[dspy.Example], list[dspy.Example]]:
        if len(trainset) < 3:
            raise ValueError("Without a valset GReaTer splits one off the trainset, which needs "
                             f"at least 3 examples; got {len(trainset)}. Pass valset=.")
        held = max(1, len(trainset) // 3)
        logger.warning("No valset given: using the last %d of the %d training examples for "
                       "validation.", held, len(trainset))
        return trainset[:-held], trainset[-held:]

    def _reasoner(self, lm: Any) -> tuple[Any, str]:
        from .adapters.lm import LocalEngine
        from .adapters.server import ServerReasoner

        engine = getattr(lm, "engine", None)
        if isinstance(engine, LocalEngine):
            path = getattr(engine.reasoner, "model_path", None)
            return engine.reasoner, os.fspath(self.gradient_model or path)
        if self.gradient_model is None:
            raise GreaterError(
                f"The LM {getattr(lm, 'model', lm)!r} is not a local engine, so GReaTer cannot "
                "take gradients through it. Pass gradient_model= (a local folder of the same "
                "weights, for a vLLM server) or task_lm=local_lm(...) to optimize on a local proxy.")
        return ServerReasoner(lm, tokenizer=self.gradient_model), os.fspath(self.gradient_model)

    def _gradient_model(self, path: str) -> Any:
        from .adapters.hf import HFGradientModel

        return HFGradientModel(path, dtype=self.dtype)


class _Validator:
    """Scores of instructions on the validation set by the real program, kept in the run dir."""

    def __init__(self, program: dspy.Module, predictor: str, valset: list[dspy.Example],
                 metric: Callable, lm: Any, adapter: Any, num_threads: int, max_errors: int,
                 run: RunDir) -> None:
        self.program, self.predictor, self.valset, self.metric = program, predictor, valset, metric
        self.lm, self.adapter, self.num_threads, self.max_errors = lm, adapter, num_threads, max_errors
        self.cache_file = run.path / "validation.json"
        self.scores: dict[str, float] = (json.loads(self.cache_file.read_text())
                                         if self.cache_file.exists() else {})

    def __call__(self, instructions: str) -> float:
        if instructions not in self.scores:
            candidate = self.program.deepcopy()
            predictor = dict(candidate.named_predictors())[self.predictor]
            predictor.signature = predictor.signature.with_instructions(instructions)
            metric = lambda ex, pred, trace=None: metric_value(self.metric(ex, pred, trace))  # noqa: E731
            with dspy.context(lm=self.lm, adapter=self.adapter):
                result = dspy.Evaluate(devset=self.valset, metric=metric,
                                       num_threads=self.num_threads, display_progress=False,
                                       max_errors=self.max_errors, failure_score=0.0)(candidate)
            self.scores[instructions] = sum(s for _, _, s in result.results) / len(self.valset)
            write_json_atomically(self.cache_file, self.scores)
        return self.scores[instructions]

    def per_step(self, history: Sequence[StepRecord]) -> list[float | None]:
        return [self.scores.get(record.prompt_after) for record in history]


def _describe(signature: Any) -> str:
    inputs = ", ".join(signature.input_fields)
    outputs = ", ".join(signature.output_fields)
    return f"{inputs} -> {outputs}"


def _digest(examples: Sequence[dspy.Example]) -> str:
    data = json.dumps([dict(ex.items()) for ex in examples], sort_keys=True, default=str)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def _se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n else float("nan")


def _plot(path: Path, train: list[float], validation: list[float | None], start: float) -> None:
    """Train and validation score per step, as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no plot (pip install matplotlib).")
        return
    figure, axes = plt.subplots(figsize=(6, 3.5))
    steps = list(range(1, len(train) + 1))
    axes.plot(steps, train, marker="o", label="train batch (metric)")
    points = [(s, v) for s, v in zip(steps, validation) if v is not None]
    if points:
        axes.plot(*zip(*points), marker="s", label="validation")
    axes.axhline(start, color="grey", linestyle="--", label="start (validation)")
    axes.set_xlabel("step")
    axes.set_ylabel("score")
    axes.set_title("GReaTer")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
