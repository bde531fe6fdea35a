"""Parse rate and accuracy of DSPy adapters on BIG-Bench Hard with an embedded model.

Programs and adapters, each over the first ``--questions`` questions of every task in the
benchmark copy of BBH (``../shared/data/bbh``), greedy, on the local vLLM engine:

- ``chat``: ``ChainOfThought`` under DSPy's ``ChatAdapter``, as DSPy runs it (a parse failure
  makes a second call through its JSON-adapter fallback); ``json``: under ``JSONAdapter``;
- ``forced-system`` / ``forced-after``: under :class:`ForcedExtractionAdapter`, instructions in the
  system message / after the inputs; ``predict``: ``Predict`` (no reasoning) under it;
- ``typed-map`` / ``typed-constrain``: the answer field typed ``Literal[<the task's labels>]`` where
  the task has a closed label set (18 of 21; the others keep ``str``), the completion mapped to a
  label / decoding constrained to the labels.

A failed parse scores 0. ``regex`` is the accuracy when failures are rescued by reading the last
label (or the last line) out of the raw completion: the bar set for ChatAdapter.
Prints Markdown tables (mean over tasks, then per task) beside each task's majority-class rate.
With ``--out`` the rows are saved after each ``--group`` of tasks, and a run with the same
``--out`` resumes: the tasks already in the file are not run again. ``--screen A.json B.json ...``
prints the ``typed-constrain`` row of each results file side by side, per task (the models' screen).

    python benchmarks/adapters_bbh.py [--model NAME] [--questions 50] [--tasks a,b]
        [--configs chat,forced-after] [--out FILE]
    python benchmarks/adapters_bbh.py --screen smollm2.json qwen.json
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
import time
from pathlib import Path
from typing import Any, Literal

CONFIGS = (
    "chat",
    "json",
    "forced-system",
    "forced-after",
    "typed-map",
    "typed-constrain",
    "predict",
)
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "bbh"


def task_labels(examples: list[Any]) -> list[str] | None:
    """The task's answers when they form a small closed set (multiple choice, yes/no, ...)."""
    labels = sorted({str(ex.answer).strip() for ex in examples})
    return labels if len(labels) <= 20 else None


def regex_answer(text: str, labels: list[str] | None) -> str:
    """A lenient reading of a raw completion: the last label it mentions, else its last line."""
    if labels:
        pattern = "|".join(re.escape(label) for label in sorted(labels, key=len, reverse=True))
        found = re.findall(rf"(?<!\w)({pattern})(?!\w)", text, flags=re.IGNORECASE)
        if found:
            return found[-1]
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def build(config: str, labels: list[str] | None) -> tuple[Any, Any]:
    """(program, adapter) for a config."""
    import dspy

    from dspy_greater.forced_extraction import ForcedExtractionAdapter

    if config.startswith("typed"):
        answer_type = Literal[tuple(labels)] if labels else str  # type: ignore[valid-type]
        signature = dspy.Signature(
            {"question": (str, dspy.InputField()), "answer": (answer_type, dspy.OutputField())}
        )
        closed = "map" if config == "typed-map" else "constrain"
        return dspy.ChainOfThought(signature), ForcedExtractionAdapter(
            instructions="system", closed_sets=closed
        )
    adapters = {
        "chat": dspy.ChatAdapter(),
        "json": dspy.JSONAdapter(),
        "forced-system": ForcedExtractionAdapter(instructions="system"),
        "forced-after": ForcedExtractionAdapter(instructions="after_inputs"),
        "predict": ForcedExtractionAdapter(instructions="after_inputs"),
    }
    module = dspy.Predict if config == "predict" else dspy.ChainOfThought
    return module("question -> answer"), adapters[config]


class Measured:
    """Runs a program and keeps what a benchmark needs: the answer, or the raw failed completion."""

    def __init__(self, program: Any) -> None:
        self.program = program

    def __call__(self, **inputs: Any) -> Any:
        import dspy
        from dspy.utils.exceptions import AdapterParseError

        try:
            prediction = self.program(**inputs)
        except AdapterParseError as exc:
            return dspy.Prediction(answer=None, parsed=False, raw=exc.lm_response or "")
        answer = prediction.answer
        return dspy.Prediction(
            answer=None if answer is None else str(answer), parsed=answer is not None, raw=""
        )


def run_tasks(
    config: str,
    tasks: dict[str, list[Any]],
    labels: dict[str, list[str] | None],
    lm: Any,
    threads: int,
) -> tuple[dict[str, Any], float]:
    """One config on some tasks' examples, all in one parallel batch (one task alone leaves the
    engine idle while its last chains finish): each task's counts, and the seconds."""
    import dspy

    from dspy_greater.data import bbh_answer_matches
    from dspy_greater.stats import majority_class_rate

    jobs: list[tuple[str, Any, Any, Any]] = []
    for task, examples in tasks.items():
        program, adapter = build(config, labels[task])
        jobs.extend((task, Measured(program), adapter, ex) for ex in examples)
    started = time.perf_counter()

    def one(job: tuple[str, Any, Any, Any]) -> Any:
        _, program, adapter, example = job
        with dspy.context(lm=lm, adapter=adapter):
            return program(question=example.question)

    executor = dspy.Parallel(
        num_threads=threads, max_errors=len(jobs) + 1, disable_progress_bar=True
    )
    predictions = executor([(one, (job,)) for job in jobs])
    seconds = time.perf_counter() - started
    rows: dict[str, Any] = {
        task: {"n": 0, "parsed": 0, "correct": 0, "regex": 0, "majority": majority_class_rate(ex)}
        for task, ex in tasks.items()
    }
    for (task, _, _, example), prediction in zip(jobs, predictions, strict=True):
        row = rows[task]
        row["n"] += 1
        gold = str(example.answer)
        if prediction is not None and prediction.parsed:
            row["parsed"] += 1
            hit = bbh_answer_matches(prediction.answer, gold)
            row["correct"] += hit
            row["regex"] += hit
        elif prediction is not None:
            row["regex"] += bbh_answer_matches(regex_answer(prediction.raw, labels[task]), gold)
    return rows, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED, help="folder of BBH task files")
    parser.add_argument("--model", default=None, help="an embedded model's name or a folder")
    parser.add_argument("--tasks", default="", help="comma-separated task names (default: all)")
    parser.add_argument("--questions", type=int, default=50)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--max-tokens", type=int, default=256, help="per LM call")
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--group", type=int, default=7, help="tasks run (and saved) together")
    parser.add_argument("--out", type=Path, default=None, help="keep the raw counts (resumable)")
    parser.add_argument("--screen", type=Path, nargs="+", help="print these results side by side")
    args = parser.parse_args()
    if args.screen:
        screen(args.screen)
        return
    logging.getLogger("dspy").setLevel(logging.ERROR)

    import dspy_greater
    from dspy_greater.lm import local_lm
    from dspy_greater.models import DEFAULT_MODEL, EMBEDDED_MODELS

    names = (
        args.tasks.split(",") if args.tasks else sorted(p.stem for p in args.data.glob("*.json"))
    )
    configs = args.configs.split(",")
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown config {unknown}; choose from {', '.join(CONFIGS)}")
    files = {name: dspy_greater.load_bbh(args.data / f"{name}.json") for name in names}
    tasks = {name: examples[: args.questions] for name, examples in files.items()}
    labels = {name: task_labels(examples) for name, examples in files.items()}
    model = args.model or DEFAULT_MODEL
    entry = EMBEDDED_MODELS.get(model)
    setting = {"model": entry.title if entry else str(model), "questions": args.questions}
    setting["max_tokens"] = args.max_tokens
    results: dict[str, Any] = {"_setting": setting}
    if args.out and args.out.exists():
        results = json.loads(args.out.read_text())
        if results.get("_setting") != setting:
            raise SystemExit(f"{args.out} holds a run with other settings: {results['_setting']}")
    if todo := [(c, t) for c in configs for t in tasks if t not in results.get(c, {})]:
        lm = local_lm(args.model, max_tokens=args.max_tokens)
    for config in configs:
        left = [t for c, t in todo if c == config]
        for start in range(0, len(left), args.group):
            group = left[start : start + args.group]
            logging.getLogger(__name__).warning("Running %s on %s ...", config, group)
            rows, seconds = run_tasks(
                config, {t: tasks[t] for t in group}, labels, lm, args.threads
            )
            done = results.setdefault(config, {})
            done.update(rows)
            done["_seconds"] = done.get("_seconds", 0.0) + seconds
            if args.out:
                args.out.write_text(json.dumps(results, indent=1))
    report(results, tasks, args)


def _configs(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each config's per-task rows (its ``_seconds`` left out)."""
    return {
        config: {t: r for t, r in rows.items() if not t.startswith("_")}
        for config, rows in results.items()
        if not config.startswith("_")
    }


def _seconds(results: dict[str, Any], config: str) -> float:
    return float(results[config].get("_seconds", 0.0))


def report(results: dict[str, Any], tasks: dict[str, list[Any]], args: Any) -> None:
    from dspy_greater.stats import majority_class_rate, standard_error

    majority = {t: majority_class_rate(ex) for t, ex in tasks.items()}
    print(
        f"\nBBH, {len(tasks)} tasks x first {args.questions} questions, "
        f"{results['_setting']['model']}, greedy, max_tokens {args.max_tokens} per call, "
        "local vLLM engine (CPU)\n"
    )
    print("| config | tasks | parse rate | accuracy (± s.e.) | regex-rescued | majority | wall |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    # Identical LM calls are answered from DSPy's cache (`json` repeats `chat`'s fallback
    # calls; the typed runs share their reasoning calls): wall times are not comparable.
    for config, per_task in _configs(results).items():
        if not per_task:
            continue
        n = sum(r["n"] for r in per_task.values())
        acc = statistics.mean(r["correct"] / r["n"] for r in per_task.values())
        regex = statistics.mean(r["regex"] / r["n"] for r in per_task.values())
        parsed = sum(r["parsed"] for r in per_task.values()) / n
        floor = statistics.mean(majority[t] for t in per_task)
        print(
            f"| {config} | {len(per_task)} | {parsed:.1%} | {acc:.1%} ± "
            f"{standard_error(acc, n):.1%} | {regex:.1%} | {floor:.1%} | "
            f"{_seconds(results, config):.0f} s |"
        )
    configs = [c for c, rows in _configs(results).items() if rows]
    print("\nAccuracy per task (parse rate in brackets where below 100 %)\n")
    print("| task | majority | " + " | ".join(configs) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in configs) + " |")
    for task in tasks:
        cells = []
        for config in configs:
            row = results[config].get(task)
            if row is None:
                cells.append("–")
                continue
            cell = f"{row['correct'] / row['n']:.0%}"
            if row["parsed"] < row["n"]:
                cell += f" ({row['parsed'] / row['n']:.0%})"
            cells.append(cell)
        print(f"| {task} | {majority[task]:.0%} | " + " | ".join(cells) + " |")


def screen(files: list[Path], config: str = "typed-constrain") -> None:
    """Each file's ``config`` row side by side per task, beside the majority rate: the models'
    screen. A cell is accuracy ± s.e.; the margin over the majority rate is in brackets."""
    from dspy_greater.stats import standard_error

    runs = [json.loads(f.read_text()) for f in files]
    rows = [_configs(run)[config] for run in runs]
    tasks = sorted(set().union(*rows))
    names = [run["_setting"]["model"] for run in runs]
    print(f"\n`{config}`, first {runs[0]['_setting']['questions']} questions per task\n")
    print("| task | n | majority | " + " | ".join(names) + " |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in names) + " |")
    for task in tasks:
        cells, base = [], next(r[task] for r in rows if task in r)
        for row in (r.get(task) for r in rows):
            if row is None:
                cells.append("–")
                continue
            acc = row["correct"] / row["n"]
            margin = 100 * (acc - row["majority"])
            cells.append(f"{acc:.0%} ± {standard_error(acc, row['n']):.0%} ({margin:+.0f})")
        print(f"| {task} | {base['n']} | {base['majority']:.0%} | " + " | ".join(cells) + " |")
    means = []
    for row in rows:
        done = [r for t, r in row.items() if t in tasks]
        acc = statistics.mean(r["correct"] / r["n"] for r in done)
        floor = statistics.mean(r["majority"] for r in done)
        means.append(f"{acc:.1%} ({100 * (acc - floor):+.1f})")
    print("| mean | | | " + " | ".join(means) + " |")
    walls = [f"{run[config]['_seconds'] / 60:.0f} min" for run in runs]
    print("| wall | | | " + " | ".join(walls) + " |")


if __name__ == "__main__":  # vLLM starts worker processes with spawn: keep this guard
    main()
