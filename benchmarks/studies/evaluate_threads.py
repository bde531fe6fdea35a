"""`dspy.Evaluate` on BBH questions on the local vLLM engine: how the engine batches DSPy's threads.

DSPy calls the LM once per example and field from each thread (the forced-extraction adapter: one
call for the reasoning, one for the answer). The threads reach the engine spread out, each
formatting its prompt first. The engine behind `local_lm()` either gathers the calls that arrive
within 5 ms into one batch (`gathered`, the way before issue 19) or adds each call to the requests
in flight at the model's next step (`continuous`). Each variant runs in a fresh process (its own
engine, a cold prefix cache). Prints a Markdown table; `--out` keeps the raw rows.

    python benchmarks/studies/evaluate_threads.py [--model qwen2.5-coder-1.5b] [--questions 32]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common.py
from common import load_bbh, report, run_child, without_variants

VARIANTS = {"gathered": False, "continuous": True}


def one_run(args: argparse.Namespace, variant: str) -> dict[str, Any]:
    import dspy

    import dspy_greater
    from dspy_greater import ForcedExtractionAdapter, stats
    from dspy_greater.adapters.vllm_engine import VLLMReasoner
    from dspy_greater.lm import local_lm
    from dspy_greater.models import EMBEDDED_MODELS

    logging.getLogger("dspy").setLevel(logging.ERROR)
    examples = load_bbh(args.task)
    questions = examples[: args.questions]
    reasoner = VLLMReasoner(
        dspy_greater.embedded_model(args.model), dtype=EMBEDDED_MODELS[args.model].dtype
    )
    lm = local_lm(
        reasoner=reasoner, max_tokens=args.max_tokens, continuous=VARIANTS[variant], cache=False
    )
    program = dspy_greater.bbh_program(examples, dspy_greater.PAPER_PROMPT)
    started = time.perf_counter()
    with dspy.context(lm=lm, adapter=ForcedExtractionAdapter()):
        score = stats.accuracy(program, questions, num_threads=args.threads)
    wall = time.perf_counter() - started
    tokens = sum(h["usage"]["completion_tokens"] for h in lm.history)
    sizes = lm.engine.batch_sizes
    return {
        "variant": variant,
        "model": args.model,
        "task": args.task,
        "questions": len(questions),
        "threads": args.threads,
        "max_tokens": args.max_tokens,
        "seconds": wall,
        "lm_calls": len(lm.history),
        "generated_tokens": tokens,
        "model_calls": len(sizes),  # batches (gathered) or model steps (continuous)
        "mean_batch": sum(sizes) / len(sizes) if sizes else None,
        "accuracy": score,
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| batching | wall | LM calls | generated tokens/s | model calls | mean batch | accuracy |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['seconds']:.0f} s | {r['lm_calls']} | "
            f"{r['generated_tokens'] / r['seconds']:.1f} | {r['model_calls']} | "
            f"{r['mean_batch']:.1f} | {r['accuracy']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="an embedded model's name")
    parser.add_argument("--task", default="reasoning_about_colored_objects")
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=128, help="reasoning tokens per call")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", default=None, help="JSON rows, kept as each variant finishes")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        report(one_run(args, args.child))
        return
    out = Path(args.out) if args.out else None
    rows: list[dict[str, Any]] = json.loads(out.read_text())["rows"] if out and out.exists() else []
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            sys.exit(f"--variants: {variant!r} is not one of {', '.join(VARIANTS)}")
        if any(r["variant"] == variant and r["model"] == args.model for r in rows):
            continue
        rows.append(run_child(__file__, *without_variants(sys.argv[1:]), "--child", variant))
        if out:
            out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    rows = [r for r in rows if r["model"] == args.model]
    print(
        f"dspy.Evaluate with the forced-extraction adapter, {rows[0]['questions']} {args.task} "
        f"questions, {args.threads} threads, {args.model} on the local vLLM engine, CPU\n"
    )
    print(table(rows))
    if len(rows) == 2:
        print(f"\ncontinuous vs gathered: {rows[0]['seconds'] / rows[1]['seconds']:.2f}x faster")


if __name__ == "__main__":  # vLLM starts worker processes with spawn: keep this guard
    main()
