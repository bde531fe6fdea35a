"""Which BBH rows have room for an instruction? The fixed probes (the paper's start, DSPy's default
instruction, ``brief``) scored question by question on each task's first ``--questions`` of the
room protocol's train and dev questions (the seeded pool's first 100: never its 150 test
questions, so a row chosen here is measured on questions the choice did not see).

A row has room where the best probe's paired gain over the start is at least 2 paired standard
errors. The screen runs in two passes: ``--questions 50`` on every task, then ``--questions
100 --out benchmarks/results/room_screen_qwen_100.json`` on those that show at least one paired
SE (its own file: on another machine or in another batch the first 50 are not answered quite
alike). One engine for all; a (task, probe) row already in ``--out`` at that size is skipped.

    python benchmarks/room_screen.py --model qwen2.5-coder-1.5b --dtype bfloat16 \
        [--tasks causal_judgement,...] [--questions 50] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/: common.py
from common import git_commit
from optimizers_bbh import BRIEF, DSPY_DEFAULT, TASKS, data_path
from room import has_room

from dspy_greater.search import PAPER_PROMPT
from dspy_greater.stats import PairedChange, paired_change

PROBES = {"start": PAPER_PROMPT, "dspy-default": DSPY_DEFAULT, "brief": BRIEF}
# The BBH tasks of the benchmark data the side-by-side did not use, but for the three free-form
# ones (dyck_languages, multistep_arithmetic_two, word_sorting): both models answered 0-7 % of
# them in the 256-token screen, no closed set of answers to force.
SCREENED = (
    "causal_judgement",
    "formal_fallacies",
    "geometric_shapes",
    "logical_deduction_five_objects",
    "logical_deduction_three_objects",
    "movie_recommendation",
    "ruin_names",
    "salient_translation_error_detection",
    "sports_understanding",
    "temporal_sequences",
    "tracking_shuffled_objects_five_objects",
    "tracking_shuffled_objects_seven_objects",
)
assert not set(SCREENED) & set(TASKS)
RESULTS = Path(__file__).parent / "results"


def questions_of(task: str, n: int) -> Any:
    """The task and its screen questions: the room protocol's train then dev (24 + 76)."""
    from dspy_greater import load_task

    loaded = load_task(data_path(task), train=24, dev=76, test=150)
    return loaded, (loaded.splits.train + loaded.splits.dev)[:n]


def score(task: str, probe: str, n: int, lm: Any, threads: int) -> dict[str, Any]:
    import dspy

    from dspy_greater import ForcedExtractionAdapter
    from dspy_greater.lm import cancel_local_calls, local_reasoner
    from dspy_greater.logs import generation_counts, generations_since
    from dspy_greater.stats import majority_class_rate, scores

    loaded, examples = questions_of(task, n)
    reasoner = local_reasoner(lm)  # it counts the chains cut at the token limit
    since = generation_counts(reasoner)
    started = time.perf_counter()
    try:
        with dspy.context(lm=lm, adapter=ForcedExtractionAdapter()):
            program = loaded.program(PROBES[probe])
            each = scores(program, examples, loaded.metric, num_threads=threads)
    except KeyboardInterrupt:  # DSPy's threads would generate on, and Python wait for them
        cancel_local_calls()
        raise
    generated, cut = generations_since(reasoner, since)
    return {
        "task": task,
        "probe": probe,
        "n": len(each),
        "accuracy": sum(each) / len(each),
        "majority": majority_class_rate(examples),
        "scores": each,
        "seconds": time.perf_counter() - started,
        "generations": generated,
        "generations_cut": cut,
    }


def best_gap(rows: dict[str, dict[str, Any]]) -> tuple[str, PairedChange] | None:
    """The best probe's paired change over the start on a task (None until all probes ran on
    the same questions)."""
    if set(rows) != set(PROBES) or len({r["n"] for r in rows.values()}) != 1:
        return None
    gaps = {
        p: paired_change(rows["start"]["scores"], rows[p]["scores"]) for p in PROBES if p != "start"
    }
    best = max(gaps, key=lambda p: gaps[p].difference)
    return best, gaps[best]


def summary(rows: list[dict[str, Any]]) -> str:
    by_task: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        by_task.setdefault(r["task"], {})[r["probe"]] = r
    lines = [
        "| task (n) | majority | start | dspy-default | brief | best probe - start ± paired SE | "
        "room |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    gaps = {task: best_gap(cells) for task, cells in by_task.items()}

    def strength(task: str) -> float:  # the best probe's gain in paired SEs
        gap = gaps[task]
        return gap[1].difference / (gap[1].standard_error or 1e-9) if gap else -99

    for task in sorted(by_task, key=strength, reverse=True):
        cells, gap = by_task[task], gaps[task]
        accs = [f"{cells[p]['accuracy']:.2f}" if p in cells else "—" for p in PROBES]
        first = next(iter(cells.values()))
        if gap:
            best, change = gap
            se = change.standard_error
            room = "yes" if has_room(change) else "no"
            moved = (
                f"{best} {change.difference:+.2f} ± {se:.2f} (+{change.gained} / -{change.lost})"
            )
        else:
            moved, room = "—", "—"
        lines.append(
            f"| {task} ({first['n']}) | {first['majority']:.2f} | "
            + " | ".join(accs)
            + f" | {moved} | {room} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="an embedded model's name or a folder")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--tasks", default=",".join(SCREENED))
    parser.add_argument("--questions", type=int, default=100)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=48)
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/room_screen_qwen.json")
    )
    parser.add_argument("--summary", action="store_true", help="print the table; run nothing")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    rows: list[dict[str, Any]] = (
        json.loads(args.out.read_text())["rows"] if args.out.exists() else []
    )
    if not args.summary:
        from dspy_greater import local_lm

        lm = local_lm(args.model, dtype=args.dtype, max_tokens=args.max_tokens)
        for task in args.tasks.split(","):
            for probe in PROBES:
                if any(
                    r["task"] == task and r["probe"] == probe and r["n"] >= args.questions
                    for r in rows
                ):
                    continue
                row = score(task, probe, args.questions, lm, args.threads)
                row |= {
                    "max_tokens": args.max_tokens,
                    "dtype": args.dtype,
                    "commit": git_commit(),
                    "date": datetime.date.today().isoformat(),
                }
                rows = [r for r in rows if (r["task"], r["probe"]) != (task, probe)] + [row]
                args.out.write_text(json.dumps({"rows": rows}, indent=1))
                logging.info("%s/%s: %.3f of %d", task, probe, row["accuracy"], row["n"])
    print(summary(rows))


if __name__ == "__main__":  # vLLM starts worker processes with spawn: keep this guard
    main()
