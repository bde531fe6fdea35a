"""GReaTer as a DSPy optimizer: ``GReaTer(metric=...).compile(program, trainset=...)``.

This module only orchestrates: `program` says what the program, its metric and examples mean to
the search, `stage_engines` which engines are behind its LMs; `stages` optimizes one predictor
with `run_greater`; `report` reports the run.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import dspy
from dspy.teleprompt import Teleprompter

from . import checks
from . import program as contract
from .forced_extraction import ForcedExtractionAdapter
from .identity import examples_digest, metric_identity
from .lm import cancel_local_calls
from .logs import generation_counts, truncation_note
from .report import GReaTerRun, StageRun, log_summary, plot_scores, stage_json
from .rundir import RunDir
from .search import BUDGETS, Budget, GreaterConfig, StepRecord
from .stage_engines import StageEngines, configured_adapter, stage_engines
from .stages import CompileRun, optimize_stage
from .targets import target_field

logger = logging.getLogger(__name__)

# The two budgets of reasoning tokens: the search's and the LM's (validation, the program's calls).
_BUDGET_SETTINGS = "GreaterConfig.max_reasoning_tokens, and local_lm(max_tokens=...)"


class GReaTer(Teleprompter):
    """GReaTer (gradients over reasoning) as a drop-in DSPy optimizer of a program's
    instructions, on a local open model: the model's own token gradients, taken through its own
    reasoning, choose the prompt tokens.

    Every predictor is optimized in turn. A one-predictor program targets the trainset's labels;
    in a multi-stage program each stage targets what it wrote in the runs that passed the metric
    (as DSPy's bootstrapping does), and each candidate is judged by the whole program's metric.
    The program's LM must be a local engine (`dspy_greater.lm.local_lm`) or a vLLM server.

    Args:
        metric: ``metric(example, prediction, trace=None)``: a bool, a number, or a prediction
            with a ``score``.
        auto: The budget: ``"light"`` (minutes on a CPU), ``"medium"``, ``"heavy"`` (the
            paper's); see `GreaterConfig.budget`.
        steps: Overrides the budget's number of steps.
        config: Every setting of the search (overrides ``auto``).
        gradient_model: The folder of the weights to take gradients on (default: the local
            engine's; required for a server).
        task_lm: A local LM to optimize on instead of the program's (a proxy for every
            predictor).
        adapter: How the instructions are rendered (default: the configured
            `ForcedExtractionAdapter`, else one with the instructions in the system
            message, the placement a saved program carries).
        initial_instructions: Where to start instead of the predictors' own: a string, or
            ``{predictor: instructions}``.
        predictor: Optimize only the predictor of this name.
        rounds: How many times every predictor is optimized in turn.
        metric_threshold: A pipeline's runs pass at ``score >= metric_threshold`` (default: a
            truthy score), as in DSPy's bootstrapping.
        min_evidence: The evidence guard: the chosen instructions replace the start only where
            their paired gain over it on the valset's questions is at least this many paired
            standard errors (default 1; 0: any gain). Else the start stays, and the report
            says "kept the start: not enough evidence". Few validation questions rarely clear
            it: that is the point.
        run_dir: Keeps the run, to resume it (default: a new temporary folder).
        num_threads: Parallel program calls.
        max_errors: Examples on which the program or the metric may raise over the whole run,
            each counted once (default: ``dspy.settings.max_errors``). An evaluation in which
            every example failed stops the run whatever this says.
        seed: The search's seed.
        dtype: The gradient model's dtype; None for the task engine's (``local_lm`` on
            ``"qwen2.5-coder-1.5b"``: bfloat16), else ``gradient_model``'s registered one, else
            bfloat16 on a GPU and float32 on the CPU.
        device: The gradient model's device: ``"auto"`` (CUDA where torch sees a GPU, else the
            CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        validate_every_step: Also score every step's prompt on the valset (for the plot), not
            only the start and the best ``keep_top`` prompts by training score at the end, among
            which the valset chooses either way. Off by default: on the light budget it cost
            more generations than the search itself.
        progress: Show progress bars.
        on_step: Called with each step's record after it is saved.
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
        min_evidence: float = 1.0,
        run_dir: str | os.PathLike[str] | None = None,
        num_threads: int = 16,
        max_errors: int | None = None,
        seed: int = 0,
        dtype: str | None = None,
        device: str = "auto",
        validate_every_step: bool = False,
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
            raise ValueError(f"auto must be one of {list(BUDGETS)} or None, got {auto!r}.")
        if min_evidence < 0:
            raise ValueError(
                f"min_evidence must be >= 0 (paired standard errors), got {min_evidence}."
            )
        if rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {rounds}.")
        self.metric, self.auto, self.steps, self.config = metric, auto, steps, config
        self.seed = seed
        self.gradient_model, self.task_lm, self.adapter = gradient_model, task_lm, adapter
        self.initial_instructions, self.predictor = initial_instructions, predictor
        self.rounds, self.metric_threshold = rounds, metric_threshold
        self.min_evidence = min_evidence
        self.run_dir, self.num_threads, self.max_errors = run_dir, num_threads, max_errors
        self.dtype, self.device = dtype, device
        self.validate_every_step, self.progress = validate_every_step, progress
        self.on_step = on_step

    def search_config(self) -> GreaterConfig:
        """The search's settings: ``config``, else the budget's with ``seed``; with ``steps``."""
        config = self.config or GreaterConfig.budget(self.auto or "light", seed=self.seed)
        return config if self.steps is None else replace(config, steps=self.steps)

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
        changes), with the run's report as ``compiled.greater_run`` (a `GReaTerRun`).
        ``resume=True`` continues the run in ``run_dir`` where it stopped."""
        if kwargs:
            raise TypeError(f"GReaTer.compile got unexpected arguments {sorted(kwargs)}.")
        if teacher is not None:
            logger.warning("GReaTer uses no teacher program; ignoring teacher=.")
        if not trainset:
            raise ValueError(
                "The trainset is empty; GReaTer needs labelled examples (the paper "
                "uses 50; the light budget uses 8 for the search)."
            )
        started = time.perf_counter()
        program = student.deepcopy()
        stages = contract.predictors_to_optimize(program, self.predictor)
        starts = contract.starting_instructions(stages, self.initial_instructions)
        config = self.search_config()
        # Every stage needs two output fields: checked before any work.
        targets = {name: target_field(name, p.signature) for name, p in stages}
        # a pipeline: the examples' own inputs, no label needed, no one signature for the metric
        inputs, label = None, None
        signature: Any = None
        if len(stages) == 1:
            [(name, predictor)] = stages
            signature = predictor.signature
            inputs, label = list(signature.input_fields), targets[name]
        trainset = contract.checked_examples("trainset", trainset, inputs, label)
        split_off = valset is None
        if valset is None:
            trainset, valset = contract.split_validation(trainset)
        else:
            valset = contract.checked_examples("valset", valset, inputs, label)
        # The user's metric and labels, checked before any engine starts.
        splits = {"trainset": trainset, "valset": valset}
        checks.check_labels_and_metric(self.metric, splits, signature, label)

        adapter = self.adapter or configured_adapter()
        engines = stage_engines(
            stages,
            adapter,
            task_lm=self.task_lm,
            gradient_model=self.gradient_model,
            dtype=self.dtype,
            device=self.device,
        )
        if len(stages) == 1:  # a pipeline stage's inputs are known only once the program runs
            [(name, predictor)] = stages
            _check_lengths(predictor, engines[name], adapter, starts[name], splits, config)
        reasoners = list({id(e.reasoner): e.reasoner for e in engines.values()}.values())
        counts = [generation_counts(reasoner) for reasoner in reasoners]
        models = {name: e.model_folder for name, e in engines.items()}
        model = next(iter(models.values())) if len(set(models.values())) == 1 else models

        folder = Path(run_dir or self.run_dir or tempfile.mkdtemp(prefix="greater-run-"))
        identity = {
            "search": asdict(config),
            "rounds": self.rounds,
            "predictors": {name: contract.describe(p.signature) for name, p in stages},
            "start": starts,
            "placement": adapter.instructions,
            "model": model,
            "trainset": examples_digest(trainset),
            "valset": examples_digest(valset),
            "metric": metric_identity(self.metric),
            "metric_threshold": self.metric_threshold,
        }
        store = RunDir(folder, identity, resume=resume)
        logger.info("GReaTer run directory: %s", folder)
        lm = self.task_lm or dspy.settings.lm
        max_errors = self.max_errors if self.max_errors is not None else dspy.settings.max_errors
        failures = contract.Failures(max_errors)  # over the whole run, every evaluation
        evaluator = dict(lm=lm, adapter=adapter, num_threads=self.num_threads, failures=failures)
        run = CompileRun(
            program=program,
            trainset=trainset,
            config=config,
            lm=lm,
            adapter=adapter,
            engines=engines,
            folder=folder,
            resume=resume,
            metric=self.metric,
            metric_threshold=self.metric_threshold,
            min_evidence=self.min_evidence,
            num_threads=self.num_threads,
            max_errors=max_errors,
            failures=failures,
            single=len(stages) == 1,
            validation=contract.InstructionsEvaluator(
                program,
                valset,
                self.metric,
                cache_file=folder / "validation.json",
                progress=self.progress,  # a pass over the valset can take minutes
                **evaluator,
            ),
            training=contract.InstructionsEvaluator(
                program,
                trainset[: config.num_examples],
                self.metric,
                which="training examples",
                **evaluator,
            ),
            validate_every_step=self.validate_every_step,
            progress=self.progress,
            on_step=self.on_step,
        )
        results: list[StageRun] = []
        try:
            for round_ in range(self.rounds):
                for name, predictor in stages:
                    start = starts[name] if round_ == 0 else predictor.signature.instructions
                    results.append(optimize_stage(run, name, predictor, round_, start))
        except KeyboardInterrupt:  # DSPy's scoring threads would generate on in the background
            cancel_local_calls()
            raise
        finally:
            store.close()
        store.save_result(
            {
                "instructions": {name: p.signature.instructions for name, p in stages},
                "validation_size": len(valset),
                "validation_from_trainset": split_off,
                "stages": [stage_json(stage) for stage in results],
            }
        )
        plot_scores(folder / "scores.png", results)
        log_summary(results, len(valset))
        for reasoner, since in zip(reasoners, counts, strict=True):
            note = truncation_note(reasoner, since, _BUDGET_SETTINGS)
            if note:
                logger.info("GReaTer: %s", note)
        program.greater_run = GReaTerRun(
            run_dir=folder,
            placement=adapter.instructions,
            model=model,
            proxy_model=self.task_lm is not None,
            validation_size=len(valset),
            validation_from_trainset=split_off,
            stages=results,
            seconds=time.perf_counter() - started,
        )
        return program


def _check_lengths(
    predictor: Any,
    engines: StageEngines,
    adapter: ForcedExtractionAdapter,
    start: str,
    splits: dict[str, list[dspy.Example]],
    config: GreaterConfig,
) -> None:
    """Every example fits the task engine's context with the larger reasoning budget: the
    search's, or the LM's own for the validation calls."""
    budgets = {"max_reasoning_tokens": config.max_reasoning_tokens}
    lm_tokens = (getattr(engines.lm, "kwargs", None) or {}).get("max_tokens")
    if isinstance(lm_tokens, int):
        budgets["the LM's max_tokens"] = lm_tokens
    limit = getattr(engines.reasoner, "max_model_len", None)
    checks.check_lengths(
        predictor,
        engines.gradient_model.tokenizer,  # type: ignore[attr-defined]
        adapter,
        start,
        splits,
        context_length=getattr(engines.reasoner, "context_length", None),
        new_tokens=budgets,
        limit_setting=None if limit is None else "the context: local_lm(..., max_model_len=...)",
        constrained=adapter.constrains(engines.lm),
    )
