"""`dspy.Evaluate` on BBH questions, the embedded model on the local vLLM engine: 1 vs 16 threads.

DSPy calls the LM once per example from each thread; the engine behind `local_lm()` gathers
concurrent calls into one vLLM batch. Prints a Markdown table (wall time, LM calls, tokens/s,
mean batch size). SmolLM2 does not follow ChatAdapter's format, so DSPy also makes its JSON-adapter
fallback call per example: both count as LM calls, and the failures score 0.

    python benchmarks/evaluate_threads.py [--questions 100] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import logging
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sports_understanding")
    parser.add_argument("--questions", type=int, default=100)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", default="1,16")
    args = parser.parse_args()
    logging.getLogger("dspy").setLevel(logging.ERROR)

    import dspy

    import dspy_greater
    from dspy_greater.lm import local_lm

    lm = local_lm(max_tokens=args.max_tokens, cache=False)
    devset = dspy_greater.load_bbh(args.task)[: args.questions]
    program = dspy.ChainOfThought("question -> answer")
    rows = []
    for threads in (int(t) for t in args.threads.split(",")):
        calls_before, batches_before = len(lm.history), len(lm.engine.batch_sizes)
        evaluate = dspy.Evaluate(
            devset=devset,
            metric=dspy_greater.bbh_metric,
            num_threads=threads,
            max_errors=10 * len(devset),
            display_progress=False,
            failure_score=0.0,
        )
        started = time.perf_counter()
        with dspy.context(lm=lm):
            result = evaluate(program)
        wall = time.perf_counter() - started
        history = lm.history[calls_before:]
        tokens = sum(h["usage"]["completion_tokens"] for h in history)
        batches = lm.engine.batch_sizes[batches_before:]
        rows.append(
            (threads, wall, len(history), tokens / wall, sum(batches) / len(batches), result.score)
        )
    print(
        f"dspy.Evaluate, ChainOfThought, {len(devset)} {args.task} questions, local vLLM engine, "
        f"max_tokens {args.max_tokens}, SmolLM2-135M, CPU\n"
    )
    print("| threads | wall | LM calls | generated tokens/s | mean batch | score |")
    print("| --- | --- | --- | --- | --- | --- |")
    for threads, wall, calls, rate, batch, score in rows:
        print(f"| {threads} | {wall:.0f} s | {calls} | {rate:.0f} | {batch:.1f} | {score:.1f} |")
    if len(rows) == 2:
        print(f"\n{rows[1][0]} threads vs {rows[0][0]}: {rows[0][1] / rows[1][1]:.1f}x faster")


if __name__ == "__main__":  # vLLM starts worker processes with spawn: keep this guard
    main()
