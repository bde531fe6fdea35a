"""How far can an instruction move the model on a task at all? Hand-written instructions, and the
start with twice the reasoning budget, scored on a table's test questions (``optimizers_bbh.py``'s
splits: the first 100 of the task's test split) beside the start. If no instruction a person would
write moves the test score beyond its standard error, an optimizer of the instruction has little
room on that task; if one does, the room is there and the search did not find it.

Each probe is ``dspy-greater evaluate`` on a program holding that instruction, through DSPy's cache
(the start at 128 tokens is the table's own start cell, already scored); a probe whose row is in
``--out`` is skipped, so a stopped run continues where it was.

    python benchmarks/prompt_room.py --model qwen2.5-coder-1.5b --dtype float32 \
        --tasks reasoning_about_colored_objects [--probes start,brief] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from common import git_commit
from optimizers_bbh import data_path

from dspy_greater import cli
from dspy_greater.search import PAPER_PROMPT

# name -> (instructions, reasoning tokens); written before any was scored
PROBES: dict[str, tuple[str, int]] = {
    "start": (PAPER_PROMPT, 128),
    "start-256": (PAPER_PROMPT, 256),  # as many chains as the budget cuts short, given room
    "brief": (
        "Think step by step, but briefly: at most five short sentences. Then give the answer.",
        128,
    ),
    "facts-first": (
        "First list only the facts from the question that the answer depends on. Then reason "
        "from them in a few short steps and give the answer.",
        128,
    ),
    "dspy-default": ("Given the fields `question`, produce the fields `answer`.", 128),
}


def score(task: str, name: str, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The model's test accuracy on ``task`` with the probe ``name``."""
    out = folder / "evaluate-test.json"
    if not out.exists():
        from dspy_greater import load_task

        text, max_tokens = PROBES[name]
        folder.mkdir(parents=True, exist_ok=True)
        load_task(data_path(task)).program(text).save(str(folder / "program.json"))
        splits = ["--train", "12", "--dev", "50", "--test", str(args.test)]
        engine = ["--model", args.model, "--max-tokens", str(max_tokens)]
        if args.dtype:
            engine += ["--dtype", args.dtype]
        code = cli.main(
            [
                *["evaluate", "--program", str(folder), "--data", data_path(task), *splits],
                *engine,
                *["--threads", str(args.threads), "--out", str(out)],
            ]
        )
        if code in (cli.EXIT_INTERRUPTED, cli.EXIT_TERMINATED):
            raise SystemExit(code)
        if code != 0:
            raise SystemExit(f"{task}/{name}: evaluate exited {code}")
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="an embedded model's name")
    parser.add_argument("--dtype", default=None, help="the table's dtype (default: the model's)")
    parser.add_argument("--tasks", required=True, help="comma-separated BBH task names")
    parser.add_argument("--probes", default=",".join(PROBES), help="comma-separated, in order")
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--threads", type=int, default=48)
    parser.add_argument("--out", type=Path, default=None, help="default: results/prompt_room_MODEL")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    probes = args.probes.split(",")
    unknown = sorted(set(probes) - set(PROBES))
    if unknown:
        parser.error(f"unknown probes {unknown}; choose from {sorted(PROBES)}")
    out = args.out or Path(f"benchmarks/results/prompt_room_{args.model}.json")
    rows = json.loads(out.read_text())["rows"] if out.exists() else []
    root = Path("benchmarks/runs") / f"prompt-room-{args.model}"
    for task in args.tasks.split(","):
        for name in probes:
            if any(r["task"] == task and r["probe"] == name for r in rows):
                continue
            result = score(task, name, root / task / name, args)
            text, max_tokens = PROBES[name]
            rows.append(
                {
                    "task": task,
                    "probe": name,
                    "instructions": text,
                    "max_tokens": max_tokens,
                    "dtype": result.get("dtype", args.dtype),
                    "accuracy": result["accuracy"],
                    "n": result["n"],
                    "majority": result["majority"],
                    "seconds": result["seconds"],
                    "generations": result["generations"],
                    "commit": git_commit(),
                }
            )
            out.write_text(json.dumps({"rows": rows}, indent=1))
    from dspy_greater import standard_error

    print("| task (n) | probe | reasoning tokens | majority | test accuracy | time |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['task']} ({r['n']}) | {r['probe']} | {r['max_tokens']} | {r['majority']:.3f} | "
            f"{r['accuracy']:.3f} ± {standard_error(r['accuracy'], r['n']):.3f} | "
            f"{r['seconds'] / 60:.1f} min |"
        )


if __name__ == "__main__":  # vLLM starts worker processes with spawn: keep this guard
    main()
