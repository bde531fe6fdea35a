"""GReaTer side by side with DSPy's optimizers on BBH, with the embedded model, through the CLI.

For each (task, optimizer) cell: ``dspy-greater optimize`` then ``dspy-greater evaluate --split
test``, in this process (one vLLM engine for all cells), every optimizer's task model under the
same forced-extraction adapter, the same seeded splits for all: the first ``--train`` and
``--dev`` examples of the paper's splits (50 / 100 / rest) and its whole test split. COPRO and
MIPROv2 run instruction-only (no demos) with the same small model as proposer; GEPA reflects with
it too. A cell whose evaluation exists is skipped; an interrupted GReaTer or GEPA cell resumes.
Prints a Markdown table (accuracy ± standard error, majority-class rate, wall time, generations)
and writes the rows as JSON.

    python benchmarks/optimizers_bbh.py [--tasks sports_understanding,...] [--optimizers ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
from pathlib import Path

from dspy_greater import cli, standard_error

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "bbh"
TASKS = (
    "sports_understanding",
    "causal_judgement",
    "formal_fallacies",
    "boolean_expressions",
    "temporal_sequences",
    "disambiguation_qa",
)
BUDGETS = {  # per optimizer, chosen so that a task's row takes about half an hour here
    "none": [],
    "greater": ["--budget", "light", "--steps", "6"],
    "copro": ["--candidates", "4", "--depth", "2"],
    "miprov2": ["--candidates", "4", "--trials", "6"],
    "gepa": ["--metric-calls", "120"],
}


def data_path(task: str) -> str:
    path = SHARED / f"{task}.json"
    return str(path) if path.exists() else task


def run_cell(task: str, optimizer: str, args: argparse.Namespace) -> dict | None:
    folder = Path(args.run_root) / task / optimizer
    evaluation = folder / "evaluate-test-embedded.json"
    if not evaluation.exists():
        common = [
            "--data",
            data_path(task),
            "--train",
            str(args.train),
            "--dev",
            str(args.dev),
            "--seed",
            str(args.seed),
            "--max-tokens",
            str(args.max_tokens),
            "--no-cache",
        ]
        resume = ["--resume"] if folder.exists() else []
        code = cli.main(
            [
                "optimize",
                *common,
                "--optimizer",
                optimizer,
                *BUDGETS[optimizer],
                "--run-dir",
                str(folder),
                *resume,
            ]
        )
        if code != 0:
            logging.error("%s/%s: optimize exited %d", task, optimizer, code)
            return None
        code = cli.main(["evaluate", "--program", str(folder / "program.json"), "--no-cache"])
        if code != 0:
            logging.error("%s/%s: evaluate exited %d", task, optimizer, code)
            return None
    result = json.loads((folder / "result.json").read_text())
    scored = json.loads(evaluation.read_text())
    return {
        "task": task,
        "optimizer": optimizer,
        "test": scored["accuracy"],
        "n": scored["n"],
        "majority": scored["majority"],
        "seconds": result["seconds"],
        "generations": result["generations"],
        "dev_start": result.get("dev_start"),
        "dev_result": result.get("dev_result"),
        "instructions": result["instructions"],
    }


def table(rows: list[dict], optimizers: list[str]) -> str:
    """Markdown: per task, test accuracy ± standard error, then (optimizers) the dev score
    before -> after, wall time and generations; the mean over the tasks every column finished."""
    names = {
        "none": "start",
        "greater": "GReaTer",
        "copro": "COPRO",
        "miprov2": "MIPROv2",
        "gepa": "GEPA",
    }
    lines = [
        "| task (test n) | majority | " + " | ".join(names.get(o, o) for o in optimizers) + " |",
        "| --- | --- | " + " | ".join("---" for _ in optimizers) + " |",
    ]
    by_task: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_task.setdefault(r["task"], {})[r["optimizer"]] = r
    for task, mine in by_task.items():
        cells = []
        for name in optimizers:
            r = mine.get(name)
            if r is None:
                cells.append("")
                continue
            cell = f"{r['test']:.3f} ± {standard_error(r['test'], r['n']):.3f}"
            if name != "none":
                cell += (
                    f"<br>dev {r['dev_start']:.2f}→{r['dev_result']:.2f}<br>"
                    f"{r['seconds'] / 60:.0f} min, {r['generations']} gen."
                )
            cells.append(cell)
        first = next(iter(mine.values()))
        lines.append(
            f"| {task} ({first['n']}) | {first['majority']:.3f} | " + " | ".join(cells) + " |"
        )
    complete = [mine for mine in by_task.values() if all(o in mine for o in optimizers)]
    if complete:
        means = [f"{statistics.mean(m[o]['test'] for m in complete):.3f}" for o in optimizers]
        majority = statistics.mean(next(iter(m.values()))["majority"] for m in complete)
        lines.append(
            f"| **mean of {len(complete)} tasks** | {majority:.3f} | " + " | ".join(means) + " |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--optimizers", default=",".join(BUDGETS))
    parser.add_argument("--train", type=int, default=12)
    parser.add_argument("--dev", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--run-root", default="benchmarks/runs/optimizers")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    optimizers = args.optimizers.split(",")
    rows = []
    for task in args.tasks.split(","):
        for optimizer in optimizers:
            row = run_cell(task, optimizer, args)
            if row is not None:
                rows.append(row)
                logging.info("done: %s", row)
            if args.out:
                Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    print(table(rows, optimizers))


if __name__ == "__main__":  # vLLM starts worker processes with spawn: keep this guard
    main()
