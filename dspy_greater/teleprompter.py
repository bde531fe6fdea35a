"""GReaTer as a DSPy optimizer: ``GReaTer(metric=...).compile(program, trainset=...)``.

The slot is a predictor's ``signature.instructions`` as :class:`ForcedExtractionAdapter` sends
them; the reasoning comes from the program's own LM (its local engine); the gradients from the
same weights in ``transformers``; candidates are selected by the user's metric (on the outputs the
adapter generates for a one-predictor program, on the whole program's outputs for a pipeline),
plus the paper's readability term; each stage's final choice is made on the validation set among
its best prompts and its starting instructions. Predictors are optimized one after another.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import math
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import dspy
from dspy.teleprompt import Teleprompter

from .errors import GreaterError
from .extract import AdapterRenderer, ForcedExtractionAdapter
from .logs import generation_counts, truncation_note
from .rundir import RunDir, write_json_atomically
from .search import GreaterConfig, GreaterResult, Prompt, PromptScore, StepRecord, run_greater
from .traces import (
    TracedRuns,
    final_predictor,
    label_examples,
    metric_value,
    stage_examples,
    target_field,
    trace_program,
)

logger = logging.getLogger(__name__)

Budget = Literal["light", "medium", "heavy"]
# Search settings per budget; "heavy" is the paper's (100 steps over 50 examples).
BUDGETS: dict[str, dict[str, Any]] = {
    "light": dict(
        steps=8, num_examples=8, top_k=10, num_subsets=4, subset_size=3, max_reasoning_tokens=128
    ),
    "medium": dict(
        steps=25, num_examples=16, top_k=20, num_subsets=5, subset_size=4, max_reasoning_tokens=256
    ),
    "heavy": {},
}


@dataclass
class StageRun:
    """One predictor's optimization (one per predictor and round)."""

    predictor: str
    round: int
    start_instructions: str
    instructions: str
    validation: dict[str, float]  # candidate instructions -> validation score (the rest fixed)
    train_scores: list[float]  # the metric on the training batch after each step
    validation_per_step: list[float | None]  # None where validate_every_step=False
    targets: str  # "labels" (the examples' own) or "traces" (from runs that passed the metric)
    examples: int  # how many examples the gradients were taken on
    search: GreaterResult | None = None
    skipped: str | None = None  # why this stage was not optimized
    model: str | None = None  # the folder of the model it reasoned and took gradients on

    @property
    def history(self) -> list[StepRecord]:
        """Each step's record (candidates, gradient ranks, scores, timings)."""
        return self.search.history if self.search is not None else []


@dataclass
class GReaTerRun:
    """What one compile did; also in ``run_dir/run.json``. Attached to the compiled program as
    ``compiled.greater_run`` (DSPy does not save it; the run directory keeps it). ``stages``
    holds one :class:`StageRun` per predictor and round; for a one-predictor program the
    fields of its last round's stage read directly (``run.instructions``, ``run.history``, ...)."""

    run_dir: Path
    placement: str
    model: str | dict[str, str]  # {predictor: folder} where the predictors use other models
    proxy_model: bool  # the gradients and reasoning ran on task_lm, not the program's LM
    validation_size: int
    validation_from_trainset: bool
    stages: list[StageRun]

    @property
    def only_stage(self) -> StageRun:
        """The one predictor's stage (its last round's, with ``rounds`` > 1)."""
        predictors = list(dict.fromkeys(stage.predictor for stage in self.stages))
        if len(predictors) != 1:
            raise AttributeError(
                f"This run optimized the predictors {predictors}; read their "
                "stages from run.stages."
            )
        return self.stages[-1]

    predictor = property(lambda self: self.only_stage.predictor)
    start_instructions = property(lambda self: self.only_stage.start_instructions)
    instructions = property(lambda self: self.only_stage.instructions)
    validation = property(lambda self: self.only_stage.validation)
    train_scores = property(lambda self: self.only_stage.train_scores)
    search = property(lambda self: self.only_stage.search)
    history = property(lambda self: self.only_stage.history)


def _prompt_nll(model: Any, rendered: Sequence[Any], shared_context: bool) -> float:
    """Mean NLL of the prompt tokens given what precedes them (a forward pass over the context
    up to the slot only; one example when the context before the slot is shared)."""
    nlls = []
    for item in rendered[:1] if shared_context else rendered:
        logprobs = model.prompt_logprobs(item.ids[: item.slot.stop])
        slot = logprobs[item.slot.start - 1 : item.slot.stop - 1]
        nlls.append(-sum(slot) / len(slot))
    return sum(nlls) / len(nlls)


class _MetricScorer:
    """The selection score of a one-predictor program's prompt: 1 - mean metric over the training
    batch, on the outputs the adapter generates after the search's own reasoning (no extra
    reasoning call), + weight * the prompt's mean NLL."""

    def __init__(
        self,
        *,
        metric: Callable,
        examples: Sequence[dspy.Example],
        lm: Any,
        adapter: ForcedExtractionAdapter,
        renderer: AdapterRenderer,
        gradient_model: Any,
        nll_weight: float,
        num_threads: int,
        max_errors: int,
    ) -> None:
        self.metric, self.examples, self.lm, self.adapter = metric, list(examples), lm, adapter
        self.renderer, self.model = renderer, gradient_model
        self.nll_weight, self.num_threads, self.max_errors = nll_weight, num_threads, max_errors
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
        prediction = dspy.Prediction(**values)
        try:
            return metric_value(self.metric(example, prediction, None))
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

    def __call__(self, prompt: Prompt, rendered: Sequence[Any]) -> PromptScore:
        self.errors = 0  # max_errors holds per evaluation of a prompt, as in dspy.Evaluate
        text = self.renderer.decode_prompt(prompt)
        signature = self.renderer.signature.with_instructions(text)
        tokenizer = self.renderer.tokenizer
        chains = [tokenizer.decode(list(item.ids[item.reasoning])).strip() for item in rendered]
        with ThreadPoolExecutor(max(1, min(self.num_threads, len(chains)))) as pool:
            scores = list(
                pool.map(
                    lambda args: self._one(signature, *args),
                    zip(self.examples, chains, strict=True),
                )
            )
        mistakes = 1.0 - sum(scores) / len(scores)
        nll = _prompt_nll(self.model, rendered, self.adapter.instructions == "system")
        return PromptScore(mistakes, nll, mistakes + self.nll_weight * nll)


class _ProgramScorer:
    """The selection score of one stage's prompt in a multi-stage program: 1 - the whole
    program's mean metric on the training batch with that prompt (a change in one stage is judged
    by its effect on the end result), + weight * the prompt's mean NLL."""

    def __init__(
        self,
        *,
        scores: _ProgramScores,
        stage: str,
        renderer: AdapterRenderer,
        gradient_model: Any,
        nll_weight: float,
        shared_context: bool,
    ) -> None:
        self.scores, self.stage, self.renderer, self.model = scores, stage, renderer, gradient_model
        self.nll_weight, self.shared_context = nll_weight, shared_context

    def __call__(self, prompt: Prompt, rendered: Sequence[Any]) -> PromptScore:
        mistakes = 1.0 - self.scores(self.stage, self.renderer.decode_prompt(prompt))
        nll = _prompt_nll(self.model, rendered, self.shared_context)
        return PromptScore(mistakes, nll, mistakes + self.nll_weight * nll)


class GReaTer(Teleprompter):
    """GReaTer (gradients over reasoning) as a drop-in DSPy optimizer of a program's
    instructions, on a local open model.

    Every predictor is optimized in turn (``rounds`` times), or only ``predictor``. A
    one-predictor program targets the trainset's labels; in a multi-stage program each stage
    targets what it wrote in the runs that passed the metric (``metric_threshold`` as in DSPy's
    bootstrapping), and each candidate is judged by the whole program's metric.

    ``metric(example, prediction, trace=None)`` returns a bool, a number or a prediction with a
    ``score``. ``auto`` picks a budget (``"light"`` runs in minutes on a CPU, ``"heavy"`` is the
    paper's); ``steps`` or a full ``config`` (:class:`GreaterConfig`) override it. The program's
    LM (``task_lm`` to optimize on a local proxy instead) must be a local engine
    (:func:`dspy_greater.adapters.lm.local_lm`) or a vLLM server, and ``gradient_model`` (a model
    folder; by default the local engine's) the same weights. The instructions are rendered as
    ``adapter`` sends them (a :class:`ForcedExtractionAdapter`; by default the configured one, or
    one with the instructions in the system message, the placement a saved program carries).
    The gradient model runs on ``device`` (``"cuda"`` where there is a GPU) in ``dtype``.
    ``initial_instructions`` (a string, or ``{predictor: instructions}``) starts elsewhere than
    the predictors' own; ``run_dir`` keeps the run (default: a temp dir);
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
        initial_instructions: str | dict[str, str] | None = None,
        predictor: str | None = None,
        rounds: int = 1,
        metric_threshold: float | None = None,
        run_dir: str | os.PathLike[str] | None = None,
        num_threads: int = 16,
        max_errors: int | None = None,
        seed: int = 0,
        dtype: str = "float32",
        device: str = "cpu",
        validate_every_step: bool = True,
        progress: bool = True,
        on_step: Callable[[StepRecord], None] | None = None,
    ) -> None:
        super().__init__()
        if metric is None or not callable(metric):
            raise TypeError(
                "GReaTer needs a metric: metric(example, prediction, trace=None) -> "
                "bool | float (or a prediction with a score)."
            )
        if auto is not None and auto not in BUDGETS:
            raise ValueError(f"auto must be one of {sorted(BUDGETS)} or None, got {auto!r}.")
        self.metric = metric
        self.auto, self.steps, self.config = auto, steps, config
        self.gradient_model, self.task_lm, self.adapter = gradient_model, task_lm, adapter
        if rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {rounds}.")
        self.initial_instructions, self.predictor = initial_instructions, predictor
        self.rounds, self.metric_threshold = rounds, metric_threshold
        self.run_dir, self.num_threads, self.max_errors = run_dir, num_threads, max_errors
        self.seed, self.dtype, self.device = seed, dtype, device
        self.validate_every_step, self.progress, self.on_step = (
            validate_every_step,
            progress,
            on_step,
        )

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
    def compile(
        self,
        student: dspy.Module,
        *,
        trainset: list[dspy.Example],
        teacher: Any = None,
        valset: list[dspy.Example] | None = None,
        resume: bool = False,
        run_dir: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> dspy.Module:
        """A copy of ``student`` whose predictors' instructions GReaTer optimized (nothing else
        changes). ``resume=True`` continues the run in ``run_dir`` where it stopped."""
        if kwargs:
            raise TypeError(f"GReaTer.compile got unexpected arguments {sorted(kwargs)}.")
        if teacher is not None:
            logger.warning("GReaTer uses no teacher program; ignoring teacher=.")
        if not trainset:
            raise ValueError(
                "The trainset is empty; GReaTer needs labelled examples (the paper "
                "uses 50; the light budget uses 8 for the search)."
            )
        program = student.deepcopy()
        stages = self._pick_stages(program)
        targets = {name: target_field(name, predictor.signature) for name, predictor in stages}
        starts = self._starts(stages)
        config = self.search_config()
        if len(stages) == 1:
            [(name, predictor)] = stages
            check = lambda which, examples: self._checked(  # noqa: E731
                which, examples, list(predictor.signature.input_fields), targets[name]
            )
        else:
            check = lambda which, examples: self._checked(which, examples, None, None)  # noqa: E731
        trainset = check("trainset", trainset)
        split_off = valset is None
        valset = self._split(trainset) if split_off else check("valset", valset)
        if split_off:
            trainset = trainset[: -len(valset)]

        # Each predictor reasons on its own LM, else on the configured one (task_lm: a proxy for all).
        lm = self.task_lm or dspy.settings.lm
        stage_lms = {name: self.task_lm or predictor.lm or lm for name, predictor in stages}
        missing = [name for name, stage_lm in stage_lms.items() if stage_lm is None]
        if missing:
            raise GreaterError(
                f"No LM for {missing}: configure one (dspy.configure(lm="
                "local_lm())), set the predictors' lm, or pass task_lm=."
            )
        adapter = self.adapter or (
            dspy.settings.adapter
            if isinstance(dspy.settings.adapter, ForcedExtractionAdapter)
            else ForcedExtractionAdapter()
        )
        engines: dict[str, _Engine] = {}
        for name, stage_lm in stage_lms.items():
            adapter.check_lm(stage_lm)
            engines[name] = self._engine(stage_lm, engines.values())
        reasoners = list({id(e.reasoner): e.reasoner for e in engines.values()}.values())
        counts = [generation_counts(reasoner) for reasoner in reasoners]
        models = {name: engine.model for name, engine in engines.items()}
        model_path = next(iter(models.values())) if len(set(models.values())) == 1 else models

        folder = Path(run_dir or self.run_dir or tempfile.mkdtemp(prefix="greater-run-"))
        identity = {
            "search": asdict(config),
            "rounds": self.rounds,
            "predictors": {name: _describe(p.signature) for name, p in stages},
            "start": starts,
            "placement": adapter.instructions,
            "model": model_path,
            "trainset": _digest(trainset),
            "valset": _digest(valset),
            "metric": metric_identity(self.metric),
            "metric_threshold": self.metric_threshold,
        }
        run = RunDir(folder, identity, resume=resume)
        logger.info("GReaTer run directory: %s", folder)
        max_errors = self.max_errors if self.max_errors is not None else dspy.settings.max_errors
        job = _Job(
            program=program,
            trainset=trainset,
            valset=valset,
            config=config,
            lm=lm,
            adapter=adapter,
            engines=engines,
            folder=folder,
            resume=resume,
            max_errors=max_errors,
            single=len(stages) == 1,
            validation=_ProgramScores(
                program,
                valset,
                self.metric,
                lm,
                adapter,
                self.num_threads,
                max_errors,
                folder / "validation.json",
            ),
            training=_ProgramScores(
                program,
                trainset[: config.num_examples],
                self.metric,
                lm,
                adapter,
                self.num_threads,
                max_errors,
                None,
            ),
        )
        results: list[StageRun] = []
        try:
            for round_ in range(self.rounds):
                for name, predictor in stages:
                    start = starts[name] if round_ == 0 else predictor.signature.instructions
                    results.append(self._stage(job, name, predictor, round_, start))
        finally:
            run.close()
        report = GReaTerRun(
            run_dir=folder,
            placement=adapter.instructions,
            model=model_path,
            proxy_model=self.task_lm is not None,
            validation_size=len(valset),
            validation_from_trainset=split_off,
            stages=results,
        )
        run.save_result(
            {
                "instructions": {name: p.signature.instructions for name, p in stages},
                "validation_size": len(valset),
                "validation_from_trainset": split_off,
                "stages": [_stage_json(stage) for stage in results],
            }
        )
        _plot(folder / "scores.png", results)
        for stage in results:
            start_score, best_score = (
                stage.validation.get(stage.start_instructions),
                stage.validation.get(stage.instructions),
            )
            logger.info(
                "GReaTer %s (round %d): %r -> %r; validation %s -> %s (n=%d)",
                stage.predictor,
                stage.round,
                stage.start_instructions,
                stage.instructions,
                _fmt(start_score, len(valset)),
                _fmt(best_score, len(valset)),
                len(valset),
            )
        for reasoner, since in zip(reasoners, counts, strict=True):
            note = truncation_note(reasoner, since)
            if note:
                logger.info("GReaTer: %s", note)
        program.greater_run = report
        return program

    def _stage(self, job: _Job, name: str, predictor: Any, round_: int, original: str) -> StageRun:
        """Optimize one predictor's instructions, the others fixed; leave the validation-best
        of its candidates (always including ``original``) in the program."""
        folder = job.folder / "stages" / f"{round_}-{name.replace('/', '_')}"
        # The slot is one line: ChatAdapter indents further lines, which the search cannot edit.
        start = " ".join(original.split())
        if start != original:
            logger.info(
                "GReaTer optimizes one line of instructions; %s starts from %r.", name, start
            )
        examples, source, skipped = self._targets(job, name, predictor, folder, round_)
        if skipped:
            logger.warning("GReaTer skips %s: %s", name, skipped)
            return StageRun(
                name,
                round_,
                original,
                original,
                validation={},
                train_scores=[],
                validation_per_step=[],
                targets=source,
                examples=len(examples),
                skipped=skipped,
                model=job.engines[name].model,
            )
        signature = predictor.signature
        engine = job.engines[name]
        renderer = AdapterRenderer(
            signature,
            engine.gradient.tokenizer,
            job.adapter,
            demos=list(predictor.demos),
            constrained=job.adapter.constrains(engine.lm),
        )
        shared_context = job.adapter.instructions == "system"
        if job.single:
            scorer: Any = _MetricScorer(
                metric=self.metric,
                examples=examples[: job.config.num_examples],
                lm=engine.lm,
                adapter=job.adapter,
                renderer=renderer,
                gradient_model=engine.gradient,
                nll_weight=job.config.selection_nll_weight,
                num_threads=self.num_threads,
                max_errors=job.max_errors,
            )
        else:
            scorer = _ProgramScorer(
                scores=job.training,
                stage=name,
                renderer=renderer,
                gradient_model=engine.gradient,
                nll_weight=job.config.selection_nll_weight,
                shared_context=shared_context,
            )
        run = RunDir(
            folder,
            {"predictor": name, "round": round_, "start": original, "targets": _digest(examples)},
            resume=job.resume,
        )

        def after_step(record: StepRecord) -> None:
            if self.validate_every_step:
                job.validation(name, record.prompt_after)
            if self.on_step is not None:
                self.on_step(record)

        def validated(record: StepRecord) -> float | None:  # from the cache, on resume too
            return job.validation(name, record.prompt_after) if self.validate_every_step else None

        state = run.state() if job.resume else None
        if state is not None and state.history:
            logger.info(
                "Resuming %s after step %d of %d.", name, len(state.history), job.config.steps
            )
        try:
            result = run_greater(
                examples,
                initial_prompt=start,
                renderer=renderer,
                reasoner=engine.reasoner,
                gradient_model=engine.gradient,
                config=job.config,
                scorer=scorer,
                reasoning_cache=run.generations,
                state=state,
                on_checkpoint=run.save_state,
                on_step=after_step,
                progress=self.progress,
                desc="GReaTer" if job.single else f"GReaTer {name}",
            )
            candidates = list(
                dict.fromkeys([original, start, *(text for text, _, _ in result.top_prompts)])
            )
            validation = {text: job.validation(name, text) for text in candidates}
            scored = {renderer.decode_prompt(ids): s for ids, s in run.state().scores.items()}
            train_scores = [1.0 - scored[r.prompt_after].mistake_rate for r in result.history]
        finally:
            run.close()
        best = max(candidates, key=lambda text: (validation[text], -candidates.index(text)))
        predictor.signature = signature.with_instructions(best)
        stage = StageRun(
            name,
            round_,
            original,
            best,
            validation,
            train_scores,
            [validated(record) for record in result.history],
            source,
            len(examples),
            result,
            model=engine.model,
        )
        run.save_result(_stage_json(stage))
        return stage

    def _targets(
        self, job: _Job, name: str, predictor: Any, folder: Path, round_: int
    ) -> tuple[list[dspy.Example], str, str | None]:
        """The stage's examples for the gradient loss, their source, and why the stage is
        skipped (or None). Kept in ``targets.json``: a resumed run reuses them instead of tracing
        again (vLLM on CPU is not batch-invariant)."""
        if job.single:
            return job.trainset, "labels", None
        stored = folder / "targets.json"
        if job.resume and stored.exists():
            data = json.loads(stored.read_text())
            examples = [
                dspy.Example(**row["fields"]).with_inputs(*row["inputs"])
                for row in data["examples"]
            ]
            return examples, data["source"], data["skipped"]
        with dspy.context(lm=job.lm, adapter=job.adapter):
            traced = trace_program(
                job.program,
                job.trainset,
                self.metric,
                threshold=self.metric_threshold,
                num_threads=self.num_threads,
                max_errors=job.max_errors,
            )
        if not traced.passing:
            raise GreaterError(
                f"No run of the program passed the metric on the {len(job.trainset)} training "
                f"examples (mean score {traced.score:.3f}), so no stage has a target. Try more "
                "or easier examples, a lower metric_threshold, or starting instructions that "
                "pass on some examples."
            )
        examples, source, skipped = stage_examples(name, predictor, traced), "traces", None
        needed = max(2, job.config.subset_size)
        if len(examples) < needed:
            labelled = self._labelled(job, name, predictor, traced)
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
                    f"(of {len(job.trainset)}); it needs {needed}. Add training examples."
                )
        logger.info(
            "%s (round %d): %d target examples from %s; %d of %d runs pass (score %.3f).",
            name,
            round_,
            len(examples),
            source,
            len(traced.passing),
            len(job.trainset),
            traced.score,
        )
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomically(
            stored,
            {
                "source": source,
                "skipped": skipped,
                "examples": [
                    {"fields": dict(ex.items()), "inputs": sorted(ex.inputs().keys())}
                    for ex in examples
                ],
            },
        )
        return examples, source, skipped

    @staticmethod
    def _labelled(job: _Job, name: str, predictor: Any, traced: TracedRuns) -> list[dspy.Example]:
        """The fallback of the stage that writes the program's answer (seen in the traces): its
        traced inputs with the examples' own labels, when its target is a label of the trainset."""
        target = target_field(name, predictor.signature)
        if predictor is not final_predictor(traced, target) or not all(
            target in ex for ex in job.trainset
        ):
            return []
        return label_examples(name, predictor, traced)

    # -- pieces ------------------------------------------------------------------------------
    def _pick_stages(self, program: dspy.Module) -> list[tuple[str, Any]]:
        named = program.named_predictors()
        if not named:
            raise ValueError(
                "The program has no predictors (dspy.Predict / ChainOfThought) to optimize."
            )
        if self.predictor is None:
            return named
        for name, predictor in named:
            if name == self.predictor:
                return [(name, predictor)]
        raise ValueError(
            f"No predictor named {self.predictor!r}; the program has {[n for n, _ in named]}."
        )

    def _starts(self, stages: list[tuple[str, Any]]) -> dict[str, str]:
        given = self.initial_instructions
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
        return {
            name: given.get(name) or predictor.signature.instructions for name, predictor in stages
        }

    def _checked(
        self, which: str, examples: list[Any], inputs: list[str] | None, label: str | None
    ) -> list[dspy.Example]:
        """Examples with the inputs the program needs (``inputs``: the one predictor's input
        fields; None: the examples' own ``with_inputs``) and the label the gradient targets."""
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
                example = example.with_inputs(*inputs)
            checked.append(example)
        return checked

    @staticmethod
    def _split(trainset: list[dspy.Example]) -> list[dspy.Example]:
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
        return trainset[-held:]

    def _engine(self, lm: Any, built: Iterable[_Engine]) -> _Engine:
        """The reasoner and the gradient model behind ``lm`` (one gradient model per folder)."""
        from .adapters.lm import LocalEngine
        from .adapters.server import ServerReasoner

        for other in built:
            if other.lm is lm:  # predictors that share an LM share its engine
                return other
        engine = getattr(lm, "engine", None)
        if isinstance(engine, LocalEngine):
            reasoner = engine.reasoner
            path = self.gradient_model or getattr(reasoner, "model_path", None)
            if path is None:
                raise GreaterError(
                    f"{type(reasoner).__name__} names no model folder; pass "
                    "gradient_model= (the folder of the same weights)."
                )
            path = os.fspath(path)
        elif self.gradient_model is None:
            raise GreaterError(
                f"The LM {getattr(lm, 'model', lm)!r} is not a local engine, so GReaTer cannot "
                "take gradients through it. Pass gradient_model= (a local folder of the same "
                "weights, for a vLLM server) or task_lm=local_lm(...) to optimize on a local proxy."
            )
        else:
            reasoner = ServerReasoner(lm, tokenizer=self.gradient_model)
            path = os.fspath(self.gradient_model)
        for other in built:
            if other.model == path:
                return _Engine(lm, reasoner, path, other.gradient)
        from .adapters.hf import HFGradientModel

        return _Engine(
            lm, reasoner, path, HFGradientModel(path, dtype=self.dtype, device=self.device)
        )


@dataclass
class _Engine:
    """What one stage reasons and takes gradients with."""

    lm: Any
    reasoner: Any
    model: str  # the gradient model's folder
    gradient: Any


@dataclass
class _Job:
    """What every stage of one compile shares."""

    program: dspy.Module
    trainset: list[dspy.Example]
    valset: list[dspy.Example]
    config: GreaterConfig
    lm: Any  # the configured LM (a predictor's own LM comes first where it has one)
    adapter: ForcedExtractionAdapter
    engines: dict[str, _Engine]  # by predictor
    folder: Path
    resume: bool
    max_errors: int
    single: bool
    validation: _ProgramScores
    training: _ProgramScores


class _ProgramScores:
    """The whole program's mean metric on a set of examples with one predictor's instructions
    replaced (the others as they stand in ``program``); cached in ``cache_file``, keyed by every
    predictor's instructions."""

    def __init__(
        self,
        program: dspy.Module,
        examples: list[dspy.Example],
        metric: Callable,
        lm: Any,
        adapter: Any,
        num_threads: int,
        max_errors: int,
        cache_file: Path | None,
    ) -> None:
        self.program, self.examples, self.metric = program, examples, metric
        self.lm, self.adapter, self.num_threads, self.max_errors = (
            lm,
            adapter,
            num_threads,
            max_errors,
        )
        self.cache_file = cache_file
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
            metric = lambda ex, pred, trace=None: metric_value(self.metric(ex, pred, trace))  # noqa: E731
            with dspy.context(lm=self.lm, adapter=self.adapter):
                result = dspy.Evaluate(
                    devset=self.examples,
                    metric=metric,
                    num_threads=self.num_threads,
                    display_progress=False,
                    max_errors=self.max_errors,
                    failure_score=0.0,
                )(candidate)
            self.scores[key] = sum(s for _, _, s in result.results) / len(self.examples)
            if self.cache_file is not None:
                write_json_atomically(self.cache_file, self.scores)
        return self.scores[key]


def _stage_json(stage: StageRun) -> dict[str, Any]:
    return {
        "predictor": stage.predictor,
        "round": stage.round,
        "start_instructions": stage.start_instructions,
        "instructions": stage.instructions,
        "validation": stage.validation,
        "train_scores": stage.train_scores,
        "validation_per_step": stage.validation_per_step,
        "targets": stage.targets,
        "examples": stage.examples,
        "skipped": stage.skipped,
        "model": stage.model,
    }


def _fmt(score: float | None, n: int) -> str:
    return "-" if score is None else f"{score:.3f} ± {_se(score, n):.3f}"


def _describe(signature: Any) -> str:
    inputs = ", ".join(signature.input_fields)
    outputs = ", ".join(signature.output_fields)
    return f"{inputs} -> {outputs}"


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


def _digest(examples: Sequence[dspy.Example]) -> str:
    data = json.dumps([dict(ex.items()) for ex in examples], sort_keys=True, default=str)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def _se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n else float("nan")


def _plot(path: Path, stages: list[StageRun]) -> None:
    """Train and validation score per step (stages one after another), as a PNG. Drawn on a
    figure of its own, not through pyplot: a notebook's backend and figures stay as they are."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning("matplotlib is not installed: no plot (pip install matplotlib).")
        return
    figure = Figure(figsize=(6, 3.5))
    axes = figure.subplots()
    train, checked, offset = [], [], 0
    for stage in stages:
        for i, (score, value) in enumerate(
            zip(stage.train_scores, stage.validation_per_step, strict=True), offset + 1
        ):
            train.append((i, score))
            if value is not None:
                checked.append((i, value))
        if len(stages) > 1 and stage.history:
            axes.axvline(offset + 0.5, color="lightgrey")
            axes.text(
                offset + 0.6,
                0.02,
                stage.predictor,
                fontsize=7,
                rotation=90,
                transform=axes.get_xaxis_transform(),
            )
        offset += len(stage.history)
    if train:
        axes.plot(*zip(*train), marker="o", label="train batch (metric)")
    if checked:
        axes.plot(*zip(*checked), marker="s", label="validation")
    starts = [
        s.validation[s.start_instructions]
        for s in stages[:1]
        if s.start_instructions in s.validation
    ]
    if starts:
        axes.axhline(starts[0], color="grey", linestyle="--", label="start (validation)")
    axes.set_xlabel("step")
    axes.set_ylabel("score")
    axes.set_title("GReaTer")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
