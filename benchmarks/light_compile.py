"""A light GReaTer compile from start to finish on an embedded model: wall time, peak memory,
generations, seconds per phase, and test accuracy (± standard error, beside the start and the
majority-class rate).

Each variant runs in its own process (its peak memory, vLLM's engine included, is its own) on the
same seeded splits: a BBH task's first ``--train`` / ``--dev`` examples after shuffling, and the
first ``--test`` of the rest. ``before`` is the procedure as it was when issue 19 was opened
(every step validated, the best 10 prompts validated at the end); ``after`` the defaults now.
``after`` was measured before the DSPy calls were batched continuously (its row says
``"dspy_batching": "gathered"``); ``continuous`` is the same variant measured since, and ``kv1``
the same with vLLM's KV cache at 1 GiB instead of 2 (the memory goal). Each row names its commit.
A variant whose row is in ``--out`` is skipped, so an interrupted run resumes there; its run
folder is kept under ``--run-root`` (a GReaTer run resumes from it).

    python benchmarks/light_compile.py [--model qwen2.5-coder-1.5b] [--task NAME]
        [--variants before,after] [--out benchmarks/results/light_compile_DATE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from common import PeakMemory, git_commit, load_bbh, report, run_child, without_variants

# name: GReaTer keyword arguments, GreaterConfig overrides of the light budget, environment
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, str]]] = {
    "before": ({"validate_every_step": True}, {"keep_top": 10}, {}),
    "after": ({}, {}, {}),
    "continuous": ({}, {}, {}),
    "kv1": ({}, {}, {"VLLM_CPU_KVCACHE_SPACE": "1"}),
}
PHASES = ("reason", "propose", "gradient", "select_generation", "select")


def one_compile(args: argparse.Namespace, variant: str) -> dict[str, Any]:
    import dspy

    import dspy_greater
    from dspy_greater import ForcedExtractionAdapter, GReaTer, GreaterConfig, stats
    from dspy_greater.adapters.vllm_engine import VLLMReasoner
    from dspy_greater.lm import local_lm
    from dspy_greater.logs import generation_counts, generations_since
    from dspy_greater.models import EMBEDDED_MODELS

    options, overrides, environment = VARIANTS[variant]
    os.environ.update(environment)  # before the engine starts: its workers read it
    memory = PeakMemory()
    started = time.perf_counter()
    examples = load_bbh(args.task)
    splits = dspy_greater.split(examples, train=args.train, dev=args.dev, seed=args.seed)
    test = splits.test[: args.test]
    reasoner = VLLMReasoner(
        dspy_greater.embedded_model(args.model),
        dtype=EMBEDDED_MODELS[args.model].dtype,
        log_stats=True,  # for the prefix cache's counts
    )
    lm = local_lm(reasoner=reasoner, max_tokens=args.max_tokens, cache=False)
    dspy.configure(lm=lm, adapter=ForcedExtractionAdapter())
    program = dspy_greater.bbh_program(examples, dspy_greater.PAPER_PROMPT)
    config = replace(GreaterConfig.budget("light", seed=args.seed), steps=args.steps, **overrides)
    optimizer = GReaTer(metric=dspy_greater.bbh_metric, config=config, progress=False, **options)
    engine_seconds = time.perf_counter() - started
    mark = generation_counts(reasoner)
    looked_up, found = reasoner.prefix_cache_counts() or (0, 0)
    clock = time.perf_counter()
    compiled = optimizer.compile(
        program,
        trainset=splits.train,
        valset=splits.dev,
        run_dir=Path(args.run_root) / args.model / args.task / variant,
        resume=True,
    )
    compile_seconds = time.perf_counter() - clock
    generations = generations_since(reasoner, mark)[0]
    # the DSPy calls' batches, or requests in flight per model step when continuous (the search's
    # own generations are not here)
    batches = list(lm.engine.batch_sizes)
    queries, hits = reasoner.prefix_cache_counts() or (0, 0)
    queries, hits = queries - looked_up, hits - found
    compile_peak = memory.peak / 2**30
    run = compiled.greater_run
    [stage] = run.stages
    phases = {p: sum(r.seconds.get(p, 0.0) for r in stage.history) for p in PHASES}
    # the start's test score is the same in every variant: measured once
    start = args.test_start if args.test_start is not None else stats.accuracy(program, test)
    result = start if run.instructions == run.start_instructions else None
    if result is None:
        result = stats.accuracy(compiled, test)
    return {
        "variant": variant,
        "commit": git_commit(),
        "environment": environment,
        "model": args.model,
        "task": args.task,
        "train": len(splits.train),
        "dev": len(splits.dev),
        "test_n": len(test),
        "steps": len(stage.history),
        "engine_seconds": engine_seconds,
        "compile_seconds": compile_seconds,
        "compile_generations": generations,
        "compile_prompt_tokens": queries,
        "dspy_batching": "continuous" if lm.engine.continuous else "gathered",
        "dspy_batches": len(batches),
        "dspy_mean_batch": sum(batches) / len(batches) if batches else None,
        "prefix_cache_hit_rate": hits / queries if queries else None,
        "search_phases": phases,
        "setup_seconds": stage.search.setup_seconds if stage.search else {},
        "validated_prompts": len(stage.validation),
        "validation_start": stage.validation[stage.start_instructions],
        "validation_result": stage.validation[stage.instructions],
        "start_instructions": stage.start_instructions,
        "instructions": stage.instructions,
        "test_start": start,
        "test_result": result,
        "majority": stats.majority_class_rate(test),
        "compile_peak_gib": compile_peak,
        "peak_gib": memory.stop(),
        "wall_seconds": time.perf_counter() - started,
    }


def table(rows: list[dict[str, Any]]) -> str:
    from dspy_greater.stats import standard_error

    lines = [
        "| variant | compile | generations | start | propose | gradient | select (generation) "
        "| validation and rest | prefix-cache hits | validated | dev: start → result "
        "| test: start → result | majority | peak memory |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        p, n = r["search_phases"], r["test_n"]
        start = sum(r["setup_seconds"].values())
        # what the search's phases leave out: the valset passes, the run folder, the contract
        rest = (
            r["compile_seconds"] - start - sum(v for k, v in p.items() if k != "select_generation")
        )
        lines.append(
            f"| {r['variant']} | {r['compile_seconds'] / 60:.1f} min | "
            f"{r['compile_generations']} | {start:.0f} s | {p['propose']:.0f} s | "
            f"{p['gradient']:.0f} s | {p['select']:.0f} s ({p['select_generation']:.0f} s) | "
            f"{rest:.0f} s | "
            f"{r['prefix_cache_hit_rate'] or 0:.0%} | {r['validated_prompts']} | "
            f"{r['validation_start']:.2f} → {r['validation_result']:.2f} | {r['test_start']:.3f} ± "
            f"{standard_error(r['test_start'], n):.3f} → {r['test_result']:.3f} ± "
            f"{standard_error(r['test_result'], n):.3f} | {r['majority']:.3f} | "
            f"{r['peak_gib']:.1f} GiB |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-1.5b", help="an embedded model's name")
    parser.add_argument("--task", default="reasoning_about_colored_objects")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--train", type=int, default=8)
    parser.add_argument("--dev", type=int, default=16)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-tokens", type=int, default=128, help="reasoning tokens per call")
    parser.add_argument("--run-root", default="benchmarks/runs/light_compile")
    parser.add_argument("--out", default=None, help="JSON rows, kept as each variant finishes")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--test-start", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        from dspy_greater.logs import configure_logging

        configure_logging(verbose=False)
        report(one_compile(args, args.child))
        return
    out = Path(args.out) if args.out else None
    rows: list[dict[str, Any]] = json.loads(out.read_text())["rows"] if out and out.exists() else []
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            sys.exit(f"--variants: {variant!r} is not one of {', '.join(VARIANTS)}")
        if any(r["variant"] == variant and r["task"] == args.task for r in rows):
            continue
        known = [
            r["test_start"]
            for r in rows
            if (r["model"], r["task"], r["test_n"]) == (args.model, args.task, args.test)
        ]
        start = ["--test-start", str(known[0])] if known else []
        child = [*without_variants(sys.argv[1:]), *start, "--child", variant]
        rows.append(run_child(__file__, *child))
        if out:
            out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    print(f"A light compile ({args.steps} steps), {args.model} on {args.task}, CPU\n")
    print(table([r for r in rows if r["task"] == args.task]))


if __name__ == "__main__":  # vLLM starts worker processes with spawn: keep this guard
    main()
