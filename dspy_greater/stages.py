"""One predictor's optimization within a compile: its targets, its renderer and scorer, the
search, and the choice among its best prompts on the validation set."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dspy

from .errors import GreaterError
from .forced_extraction import ForcedExtractionAdapter
from .identity import examples_digest
from .program import AnswerMetricScorer, Failures, InstructionsEvaluator, PipelineScorer
from .renderers import AdapterRenderer
from .report import StageRun, stage_json
from .rundir import RunDir, write_json_atomically
from .search import GreaterConfig, Scorer, StepRecord, run_greater
from .stage_engines import StageEngines
from .stats import PairedChange, clears, paired_change
from .targets import stage_targets, trace_program

logger = logging.getLogger(__name__)


@dataclass
class CompileRun:
    """What every stage of one compile shares."""

    program: dspy.Module
    trainset: list[dspy.Example]
    config: GreaterConfig
    lm: Any  # the configured LM (a predictor's own LM comes first where it has one)
    adapter: ForcedExtractionAdapter
    engines: dict[str, StageEngines]  # by predictor
    folder: Path
    resume: bool
    metric: Callable[..., Any]
    metric_threshold: float | None
    num_threads: int
    min_evidence: float  # paired SEs of validation gain a change of instructions needs
    max_errors: int  # failed program runs tolerated in tracing a pipeline's targets
    failures: Failures  # failed examples over the run, against max_errors
    single: bool  # a one-predictor program: its targets are the trainset's labels
    validation: InstructionsEvaluator  # on the valset, cached in the run directory
    training: InstructionsEvaluator  # on the training batch (a pipeline stage's selection)
    validate_every_step: bool
    progress: bool
    on_step: Callable[[StepRecord], None] | None


def optimize_stage(
    run: CompileRun, name: str, predictor: Any, round_: int, original: str
) -> StageRun:
    """Optimize one predictor's instructions, the others fixed; leave the validation-best of its
    candidates (always including ``original``) in the program."""
    folder = run.folder / "stages" / f"{round_}-{name.replace('/', '_')}"
    engines = run.engines[name]
    # The slot is one line: ChatAdapter indents further lines, which the search cannot edit.
    start = " ".join(original.split())
    if start != original:
        logger.info("GReaTer optimizes one line of instructions; %s starts from %r.", name, start)
    examples, source, skipped = _targets(run, name, predictor, folder, round_)
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
            model=engines.model_folder,
        )
    signature = predictor.signature
    renderer = AdapterRenderer(
        signature,
        engines.gradient_model.tokenizer,  # type: ignore[attr-defined]
        run.adapter,
        demos=list(predictor.demos),
        constrained=run.adapter.constrains(engines.lm),
    )
    weights = dict(
        nll_weight=run.config.selection_nll_weight,
        loss_weight=run.config.selection_loss_weight,
    )
    scorer: Scorer
    if run.single:
        scorer = AnswerMetricScorer(
            metric=run.metric,
            lm=engines.lm,
            adapter=run.adapter,
            renderer=renderer,
            gradient_model=engines.gradient_model,
            num_threads=run.num_threads,
            failures=run.failures,
            **weights,
        )
    else:
        scorer = PipelineScorer(
            evaluate=run.training,
            stage=name,
            renderer=renderer,
            gradient_model=engines.gradient_model,
            **weights,
        )
    identity = {
        "predictor": name,
        "round": round_,
        "start": original,
        "targets": examples_digest(examples),
    }
    stage_dir = RunDir(folder, identity, resume=run.resume)

    def after_step(record: StepRecord) -> None:
        if run.validate_every_step:
            run.validation(name, record.prompt_after)
        if run.on_step is not None:
            run.on_step(record)

    state = stage_dir.state() if run.resume else None
    if state is not None and state.history:
        logger.info("Resuming %s after step %d of %d.", name, len(state.history), run.config.steps)
    try:
        result = run_greater(
            examples,
            initial_prompt=start,
            renderer=renderer,
            reasoner=engines.reasoner,
            gradient_model=engines.gradient_model,
            config=run.config,
            scorer=scorer,
            reasoning_cache=stage_dir.generations,
            state=state,
            on_checkpoint=stage_dir.save_state,
            on_step=after_step,
            progress=run.progress,
            desc="GReaTer" if run.single else f"GReaTer {name}",
        )
        candidates = [original, start, *(text for text, _, _ in result.top_prompts)]
        candidates = list(dict.fromkeys(candidates))
        logger.info(
            "%s: choosing among %d prompts by their score on the %d validation examples.",
            name,
            len(candidates),
            len(run.validation.examples),
        )
        validation = run.validation.score_all(name, candidates)
        final = stage_dir.state()
        assert final is not None  # the search checkpoints after its setup
        scored = {renderer.decode_prompt(ids): s for ids, s in final.scores.items()}
        train_scores = [1.0 - scored[r.prompt_after].mistake_rate for r in result.history]
    finally:
        stage_dir.close()
    best = max(candidates, key=lambda text: (validation[text], -candidates.index(text)))
    best, evidence = _with_evidence(run, name, original, best)
    predictor.signature = signature.with_instructions(best)
    per_step = [  # from the cache, on resume too; else where the final choice validated it
        run.validation(name, r.prompt_after)
        if run.validate_every_step
        else validation.get(r.prompt_after)
        for r in result.history
    ]
    stage = StageRun(
        name,
        round_,
        original,
        best,
        validation,
        train_scores,
        per_step,
        source,
        len(examples),
        result,
        model=engines.model_folder,
        evidence=evidence,
        kept_start=best == original and evidence is not None,
    )
    stage_dir.save_result(stage_json(stage))
    return stage


def _with_evidence(
    run: CompileRun, name: str, original: str, best: str
) -> tuple[str, PairedChange | None]:
    """The evidence guard: ``best`` replaces ``original`` only where its paired gain over it on
    the validation questions is ``run.min_evidence`` paired standard errors or more; else the
    start stays. Returns the choice and the paired change (None where ``best`` is the start, or
    where only mean scores are known: a run directory from before per-question scores)."""
    if best == original:
        return best, None
    before = run.validation.per_question(name, original)
    after = run.validation.per_question(name, best)
    if before is None or after is None:
        return best, None
    change = paired_change(before, after)
    if clears(change, run.min_evidence):
        return best, change
    logger.info(
        "%s: kept the start, not enough evidence for %r: %s on %d validation questions "
        "(min_evidence=%g paired SE).",
        name,
        best,
        change,
        change.n,
        run.min_evidence,
    )
    return original, change


def _targets(
    run: CompileRun, name: str, predictor: Any, folder: Path, round_: int
) -> tuple[list[dspy.Example], str, str | None]:
    """The stage's examples for the gradient loss, their source, and why the stage is skipped
    (or None). Kept in ``targets.json``: a resumed run reuses them instead of tracing again
    (vLLM on CPU is not batch-invariant)."""
    if run.single:
        return run.trainset, "labels", None
    stored = folder / "targets.json"
    if run.resume and stored.exists():
        data = json.loads(stored.read_text())
        examples = [
            dspy.Example(**row["fields"]).with_inputs(*row["inputs"]) for row in data["examples"]
        ]
        return examples, data["source"], data["skipped"]
    with dspy.context(lm=run.lm, adapter=run.adapter):
        traced = trace_program(
            run.program,
            run.trainset,
            run.metric,
            threshold=run.metric_threshold,
            num_threads=run.num_threads,
            max_errors=run.max_errors,
        )
    if not traced.passing:
        raise GreaterError(
            f"No run of the program passed the metric on the {len(run.trainset)} training "
            f"examples (mean score {traced.score:.3f}), so no stage has a target. Try more "
            "or easier examples, a lower metric_threshold, or starting instructions that "
            "pass on some examples."
        )
    needed = max(2, run.config.subset_size)
    examples, source, skipped = stage_targets(name, predictor, traced, run.trainset, needed)
    logger.info(
        "%s (round %d): %d target examples from %s; %d of %d runs pass (score %.3f).",
        name,
        round_,
        len(examples),
        source,
        len(traced.passing),
        len(run.trainset),
        traced.score,
    )
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"fields": dict(ex.items()), "inputs": sorted(ex.inputs().keys())} for ex in examples]
    write_json_atomically(stored, {"source": source, "skipped": skipped, "examples": rows})
    return examples, source, skipped
