"""GReaTer side by side with DSPy's optimizers, on an embedded model, through the CLI.

For each (task, optimizer) cell: ``dspy-greater optimize`` then ``dspy-greater evaluate --split
test``, in this process (one vLLM engine for all cells), every optimizer's task model under the
same forced-extraction adapter, the same seeded splits for all: the first ``--train`` and
``--dev`` examples of each task's protocol splits (BBH: the paper's 50 / 100 / rest; GSM8K and
FOLIO: drawn from their train split) and the first ``--test`` of its test split. COPRO and MIPROv2
run instruction-only (no demos) with the same model as proposer; GEPA reflects with it too.

Optimizing runs without DSPy's cache (its seconds and generations are the optimizer's own);
scoring uses it, so a program an earlier cell already scored (the start, or an optimizer that
kept it) is not generated again. A cell whose row is in ``--out`` is skipped; one whose run
folder exists resumes (GReaTer and GEPA where they stopped, the others from the start). Rows are
written as each cell finishes, with the commit and the CPU; the cells still to run are printed
with the Markdown table (accuracy ± standard error, majority-class rate, wall time, generations).

    python benchmarks/optimizers_bbh.py --model qwen2.5-coder-1.5b [--dtype float32]
        [--tasks gsm8k,...] [--optimizers none,greater,...]
        [--out benchmarks/results/optimizers_MODEL.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import statistics
from pathlib import Path
from typing import Any

from common import git_commit

from dspy_greater import cli
from dspy_greater.stats import paired_change, standard_error

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
# Chosen from the screen (docs/results.md) before any optimizer ran on Qwen: the six BBH tasks of
# the benchmark data where Qwen2.5-Coder-1.5B was above the majority rate and below 85 % (room both
# ways), then GSM8K (a number) and FOLIO (three labels).
TASKS = (
    "boolean_expressions",
    "disambiguation_qa",
    "logical_deduction_seven_objects",
    "penguins_in_a_table",
    "reasoning_about_colored_objects",
    "tracking_shuffled_objects_three_objects",
    "gsm8k",
    "folio",
)
BUDGETS = {  # per optimizer; see docs/results.md for what each costs on the 1.5B model
    "none": [],
    "greater": ["--budget", "light", "--steps", "6"],
    "copro": ["--candidates", "4", "--depth", "2"],
    "miprov2": ["--candidates", "4", "--trials", "6"],
    "gepa": ["--metric-calls", "200"],
}
# the instruction DSPy gives a signature that has none
DSPY_DEFAULT = "Given the fields `question`, produce the fields `answer`."
# a person's short instruction (benchmarks/studies/prompt_room.py's probe "brief")
BRIEF = "Think step by step, but briefly: at most five short sentences. Then give the answer."
# Issue 20's "why" rows, each its own column, run only when named in --optimizers: an optimizer
# (here GReaTer, or the start) with settings that are not the table's. Later options win, so
# --train here overrides.
VARIANTS = {
    "greater-keep-loss": (
        "greater",
        [
            *BUDGETS["greater"],
            *["--search", "keep_current=true", "--search", "selection_loss_weight=1.0"],
        ],
    ),
    "greater-24": (
        "greater",
        [*BUDGETS["greater"], "--train", "24", "--search", "num_examples=24"],
    ),
    "greater-after-inputs": ("greater", [*BUDGETS["greater"], "--placement", "after_inputs"]),
    # the other knobs: twice the shortlist regenerated per step, the paper's 50
    # selection examples, the medium budget (25 steps, 16 examples, 256 reasoning tokens)
    "greater-shortlist-6": ("greater", [*BUDGETS["greater"], "--search", "shortlist=6"]),
    "greater-50": (
        "greater",
        [*BUDGETS["greater"], "--train", "50", "--search", "num_examples=50"],
    ),
    "greater-medium": ("greater", ["--budget", "medium"]),
    # the start with the instructions where greater-after-inputs puts them: its test baseline
    "none-after-inputs": ("none", ["--placement", "after_inputs"]),
    # from what a DSPy user's program holds before any optimizer: DSPy's default instruction
    # (on tracking_shuffled_objects_three_objects it scored 0.44 where the paper's start scored
    # 0.29; benchmarks/studies/prompt_room.py)
    "greater-dspy-start": ("greater", [*BUDGETS["greater"], "--instructions", DSPY_DEFAULT]),
    "none-dspy-start": ("none", ["--instructions", DSPY_DEFAULT]),
    # from a program that already holds demos: the ones dspy.BootstrapFewShot keeps from the
    # model's own right answers on the train split (prompt_room.py's start+bootstrap-4)
    "greater-bootstrap": ("greater", [*BUDGETS["greater"], "--demos", "4"]),
    "none-bootstrap": ("none", ["--demos", "4"]),
    # the room question (with --max-tokens 256 for every cell): the light search at that budget
    # too, and the fixed probe "brief" that marks the room beside DSPy's default instruction
    "greater-light-256": (
        "greater",
        [*BUDGETS["greater"], "--search", "max_reasoning_tokens=256"],
    ),
    "none-brief": ("none", ["--instructions", BRIEF]),
    # GEPA at GReaTer medium's cost on the same task: its --metric-calls are set when the cell
    # runs, from greater-medium's row (`matched_options`)
    "gepa-matched": ("gepa", []),
}
# a GEPA metric call runs the program once: two generations (the reasoning, the forced answer)
GENERATIONS_PER_METRIC_CALL = 2
OPTIONS = {**BUDGETS, **{name: options for name, (_, options) in VARIANTS.items()}}
NAMES = {
    "none": "start",
    "greater": "GReaTer",
    "copro": "COPRO",
    "miprov2": "MIPROv2",
    "gepa": "GEPA",
    "greater-keep-loss": "GReaTer keep + loss",
    "greater-24": "GReaTer 24 examples",
    "greater-after-inputs": "GReaTer after the inputs",
    "greater-shortlist-6": "GReaTer shortlist 6",
    "greater-50": "GReaTer 50 examples",
    "greater-medium": "GReaTer medium budget",
    "none-after-inputs": "start after the inputs",
    "greater-dspy-start": "GReaTer from DSPy's default instruction",
    "none-dspy-start": "DSPy's default instruction",
    "greater-bootstrap": "GReaTer from the start with bootstrapped demos",
    # boolean_expressions' first GReaTer cell, run before the constrained-answer loss fix
    "greater-old-loss": "GReaTer before the answer-loss fix",
    "none-bootstrap": "the start with bootstrapped demos",
    "greater-light-256": "GReaTer light, 256 search tokens",
    "none-brief": "the probe brief",
    "gepa-matched": "GEPA at GReaTer medium's generations",
}


def data_path(task: str) -> str:
    """The benchmark data's copy of a task (BBH file, GSM8K or FOLIO folder), else its name."""
    path = SHARED / (task if task in ("gsm8k", "folio") else f"bbh/{task}.json")
    return str(path) if path.exists() else task


def matched_options(task: str, optimizer: str, rows: list[dict[str, Any]]) -> list[str] | None:
    """A cell's options; for ``gepa-matched``, GEPA's metric calls from GReaTer medium's
    generations on ``task`` (None until that cell has run)."""
    if optimizer != "gepa-matched":
        return OPTIONS[optimizer]
    medium = [r for r in rows if r["task"] == task and r["optimizer"] == "greater-medium"]
    if not medium:
        return None
    calls = max(1, round(medium[0]["generations"] / GENERATIONS_PER_METRIC_CALL))
    return ["--metric-calls", str(calls)]


def run_cell(
    task: str, optimizer: str, options: list[str], args: argparse.Namespace
) -> dict[str, Any] | None:
    folder = Path(args.run_root) / task / optimizer
    # the engine each cell optimizes and is scored with (the same dtype for both)
    model = ["--model", args.model] if args.model else []
    model += ["--dtype", args.dtype] if args.dtype else []
    common = [
        *["--data", data_path(task), "--train", str(args.train), "--dev", str(args.dev)],
        *["--test", str(args.test), "--seed", str(args.seed)],
        *["--max-tokens", str(args.max_tokens), "--threads", str(args.threads), *model],
    ]
    if not (folder / "result.json").exists():
        resume = ["--resume"] if folder.exists() else []
        name = VARIANTS[optimizer][0] if optimizer in VARIANTS else optimizer
        optimize = ["optimize", *common, "--optimizer", name, *options]
        code = cli.main([*optimize, "--run-dir", str(folder), "--no-cache", *resume])
        if code in (cli.EXIT_INTERRUPTED, cli.EXIT_TERMINATED):
            # stopped, and its engine with it: a next cell would score every question as failed
            raise SystemExit(code)
        if code != 0:
            logging.error("%s/%s: optimize exited %d", task, optimizer, code)
            return None
    evaluation = folder / "evaluate-test.json"
    if not evaluation.exists():
        scoring = ["--threads", str(args.threads), "--out", str(evaluation)]
        code = cli.main(["evaluate", "--program", str(folder), *model, *scoring])
        if code != 0:
            logging.error("%s/%s: evaluate exited %d", task, optimizer, code)
            return None
    result = json.loads((folder / "result.json").read_text())
    scored = json.loads(evaluation.read_text())
    settings = json.loads((folder / "cli.json").read_text())
    return {
        "task": task,
        "optimizer": optimizer,
        "budget": options,
        "settings": {k: settings.get(k) for k in ("model", "dtype", "train", "dev", "test")}
        | {"threads": args.threads},
        "protocol": result["protocol"],
        "test": scored["accuracy"],
        "n": scored["n"],
        "majority": scored["majority"],
        "seconds": result["seconds"],
        "generations": result["generations"],
        "test_seconds": scored["seconds"],
        "test_generations": scored["generations"],
        "test_scores": scored.get("scores"),  # per question; absent before they were recorded
        "dev_start": result.get("dev_start"),
        "dev_result": result.get("dev_result"),
        "instructions": result["instructions"],
        "evidence": _evidence(folder),
        "commit": args.commit,
        "cpu": _cpu(),
        "date": datetime.date.today().isoformat(),
    }


def _evidence(folder: Path) -> dict[str, Any] | None:
    """GReaTer's evidence guard in a cell's run: the paired validation change of its choice
    over the start, and whether the start stayed (None for other optimizers)."""
    run = folder / "greater" / "run.json"
    if not run.exists():
        return None
    [stage] = json.loads(run.read_text())["result"]["stages"]
    return {"change": stage["evidence"], "kept_start": stage["kept_start"]}


def _cpu() -> str:
    import torch

    return str(torch.backends.cpu.get_cpu_capability())


def _by_task(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Rows by task, then by optimizer (column)."""
    by_task: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        by_task.setdefault(r["task"], {})[r["optimizer"]] = r
    return by_task


def _start_of(name: str, mine: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """A cell's start: the variant's own where it has one (greater-bootstrap: none-bootstrap),
    else the row's."""
    own = name.replace("greater", "none", 1)
    return (mine.get(own) if own != name else None) or mine.get("none")


def _ranks(values: list[float]) -> list[float]:
    """Ranks from 1, ties sharing their mean rank (for Spearman's correlation)."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in order[i : j + 1]:
            ranks[k] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def what_predicts_test(rows: list[dict[str, Any]]) -> str:
    """What predicts an optimized cell's test change against its own start? Its dev gain, and
    how far its start answers above the majority rate: Spearman's correlation of each with the
    test change over every optimized cell, and the mean change where dev rose and where the
    start was at or under the majority rate."""
    by_task = _by_task(rows)
    cells = []  # (dev gain, start over the majority rate, test change)
    for mine in by_task.values():
        for name, r in mine.items():
            start = _start_of(name, mine)
            if name.startswith("none") or start is None or r.get("dev_start") is None:
                continue
            cells.append(
                (
                    r["dev_result"] - r["dev_start"],
                    start["test"] - start["majority"],
                    r["test"] - start["test"],
                )
            )
    if len(cells) < 3:
        return ""
    dev, room, test = (list(column) for column in zip(*cells, strict=True))
    rho = statistics.correlation(_ranks(dev), _ranks(test))
    rose = [t for d, _, t in cells if d > 0]
    line = f"dev gain against test change over {len(cells)} optimized cells: Spearman {rho:.2f}"
    if rose:
        line += f"; the {len(rose)} whose dev rose changed test by {statistics.mean(rose):+.3f}"
    rho = statistics.correlation(_ranks(room), _ranks(test))
    line += f"\nthe start's accuracy over the majority rate against test change: Spearman {rho:.2f}"
    for label, group in (
        ("at or under", [t for _, m, t in cells if m <= 0]),
        ("above", [t for _, m, t in cells if m > 0]),
    ):
        if group:
            line += (
                f"; {len(group)} cells whose start was {label} it: {statistics.mean(group):+.3f}"
            )
    return line


def _against_start(row: dict[str, Any], start: dict[str, Any] | None) -> str:
    """The test questions the cell turned right and wrong against the start's, where both
    recorded their scores: a paired view of the same questions that the two accuracies hide."""
    mine, theirs = row.get("test_scores"), (start or {}).get("test_scores")
    if not mine or not theirs or len(mine) != len(theirs):
        return ""
    return f"<br>against the start: {paired_change(theirs, mine)}"


def table(rows: list[dict[str, Any]], optimizers: list[str]) -> str:
    """Markdown: per task, test accuracy ± standard error, then (optimizers) the dev score
    before -> after, wall time and generations; the mean over the tasks every column finished."""
    lines = [
        "| task (test n) | majority | " + " | ".join(NAMES.get(o, o) for o in optimizers) + " |",
        "| --- | --- | " + " | ".join("---" for _ in optimizers) + " |",
    ]
    by_task = _by_task(rows)
    for task, mine in by_task.items():
        cells = []
        for name in optimizers:
            r = mine.get(name)
            if r is None:
                cells.append("")
                continue
            cell = f"{r['test']:.3f} ± {standard_error(r['test'], r['n']):.3f}"
            if VARIANTS.get(name, (name,))[0] != "none":  # the start's cell: its test only
                cell += (
                    f"<br>dev {r['dev_start']:.2f}→{r['dev_result']:.2f}<br>"
                    f"{r['seconds'] / 60:.0f} min, {r['generations']} gen."
                )
                cell += _against_start(r, _start_of(name, mine))
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
    parser.add_argument("--model", default=None, help="embedded model name or folder")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--optimizers", default=",".join(BUDGETS), help=f"of {', '.join(OPTIONS)}")
    parser.add_argument("--train", type=int, default=12)
    parser.add_argument("--dev", type=int, default=50)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--dtype",
        default=None,
        help="the engines' dtype (default: the model's on this CPU); a row's cells should share "
        "it, and a run folder resumes only in its own",
    )
    parser.add_argument("--max-tokens", type=int, default=128)
    # DSPy's parallel calls: 48 scored 50 questions 1.10x faster than 16 (Qwen, AVX2)
    parser.add_argument("--threads", type=int, default=48)
    parser.add_argument(
        "--run-root", default=None, help="default: benchmarks/runs/optimizers-MODEL"
    )
    parser.add_argument("--out", default=None, help="rows (JSON), read to skip finished cells")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args.commit = git_commit()  # what this process runs, though later commits land meanwhile
    label = Path(args.model).name if args.model else "embedded"
    args.run_root = args.run_root or f"benchmarks/runs/optimizers-{label}"
    out = Path(args.out or f"benchmarks/results/optimizers_{label}.json")
    rows: list[dict[str, Any]] = json.loads(out.read_text())["rows"] if out.exists() else []
    done = {(r["task"], r["optimizer"]) for r in rows}
    optimizers, tasks = args.optimizers.split(","), args.tasks.split(",")
    unknown = [o for o in optimizers if o not in OPTIONS]
    if unknown:
        parser.error(f"unknown --optimizers {unknown}; choose from {list(OPTIONS)}")
    # a row's cells compare only in one dtype: refuse to add a cell in another
    row_dtype = {r["task"]: r["settings"].get("dtype") for r in rows}
    mixed = [
        f"{t} (its cells: {row_dtype[t]})"
        for t in tasks
        if t in row_dtype
        and row_dtype[t] != args.dtype
        and any((t, o) not in done for o in optimizers)
    ]
    if mixed:
        parser.error(f"--dtype {args.dtype} differs from the rows' finished cells: {mixed}")
    for task in tasks:
        for optimizer in optimizers:
            if (task, optimizer) in done:
                continue
            options = matched_options(task, optimizer, rows)
            if options is None:
                logging.error("%s/%s: runs after %s/greater-medium", task, optimizer, task)
                continue
            row = run_cell(task, optimizer, options, args)
            if row is not None:
                rows.append(row)
                logging.info("done: %s/%s test %.3f", task, optimizer, row["test"])
                out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    print(table(rows, optimizers))
    print(what_predicts_test(rows))
    finished = {(r["task"], r["optimizer"]) for r in rows}
    left = [f"{t}/{o}" for t in tasks for o in optimizers if (t, o) not in finished]
    print("cells still to run: " + (", ".join(left) if left else "none"))


if __name__ == "__main__":  # vLLM starts worker processes with spawn: keep this guard
    main()
