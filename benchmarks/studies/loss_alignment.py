"""Is the teacher-forced answer loss that GReaTer's gradient follows aligned with the metric that
scores the answers? For a finished cell of ``optimizers_bbh.py`` (its task, splits, model and
reasoning budget), each of its prompts (the start and the cell's result) answers the dev
questions through the forced-extraction adapter, as the table scores them; then each example's
own reasoning is rendered with its gold answer and teacher-forced through the gradient model.

Per prompt: how often the teacher-forced argmax (the paper's "mistake") agrees with the metric,
and how well the answer loss separates the questions the metric counts right from the wrong
ones (AUC: the chance that a wrong one has the higher loss; 0.5 is no signal). Answers come
through DSPy's cache, so a cell's dev answers are not generated again.

    python benchmarks/studies/loss_alignment.py --cell benchmarks/runs/optimizers-MODEL/TASK/greater
        [--out benchmarks/results/loss_alignment.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common.py
from common import cell_task, git_commit


def auc(wrong: list[float], right: list[float]) -> float | None:
    """P(a wrong example's loss > a right one's), ties counting half; None without both."""
    if not wrong or not right:
        return None
    wins = sum((w > r) + 0.5 * (w == r) for w in wrong for r in right)
    return wins / (len(wrong) * len(right))


def measure(cell: Path, threads: int) -> list[dict[str, Any]]:
    import dspy

    from dspy_greater.adapters.hf_gradient import shared_gradient_model
    from dspy_greater.models import resolve_model
    from dspy_greater.renderers import AdapterRenderer

    settings, task, lm, adapter = cell_task(cell)
    result = json.loads((cell / "result.json").read_text())
    model = shared_gradient_model(resolve_model(settings["model"]), dtype=settings["dtype"])
    prompts = {"start": settings["instructions"], "result": result["instructions"]["predict"]}
    rows = []
    for which, text in prompts.items():
        if which == "result" and text == prompts["start"]:
            continue
        started = time.perf_counter()
        program = task.program(text)
        answered = dspy.Evaluate(
            devset=task.splits.dev,
            metric=task.metric,
            num_threads=threads,
            display_progress=True,
            failure_score=0.0,
        )(program)
        signature = program.predict.signature
        renderer = AdapterRenderer(
            signature, model.tokenizer, adapter, constrained=adapter.constrains(lm)
        )
        examples = []
        for example, prediction, score in answered.results:
            reasoning = getattr(prediction, "reasoning", "") or ""
            ids = model.tokenizer(reasoning, add_special_tokens=False)["input_ids"]
            prompt_ids = renderer.encode_prompt(text, example)
            [forced] = model.score([renderer.render(prompt_ids, example, ids)])
            examples.append(
                {
                    "metric": float(score),
                    "teacher_forced_correct": forced.correct,
                    "answer_loss": forced.answer_loss,
                }
            )
        first = task.splits.dev[0]
        scored = renderer.render(prompt_ids, first, ())
        right = [e["answer_loss"] for e in examples if e["metric"] >= 1.0]
        wrong = [e["answer_loss"] for e in examples if e["metric"] < 1.0]
        agree = [e["teacher_forced_correct"] == (e["metric"] >= 1.0) for e in examples]
        rows.append(
            {
                "cell": str(cell),
                "prompt": which,
                "instructions": text,
                "n": len(examples),
                # what the loss reads of the first example's gold answer, after what
                "scored_answer": model.tokenizer.decode(list(scored.ids[scored.answer])),
                "after": model.tokenizer.decode(list(scored.ids[scored.extractor])),
                "metric_accuracy": statistics.mean(e["metric"] for e in examples),
                "teacher_forced_accuracy": statistics.mean(
                    e["teacher_forced_correct"] for e in examples
                ),
                "agreement": statistics.mean(agree),
                "loss_right": statistics.mean(right) if right else None,
                "loss_wrong": statistics.mean(wrong) if wrong else None,
                "auc": auc(wrong, right),
                "examples": examples,
                "seconds": time.perf_counter() - started,
                "commit": git_commit(),
            }
        )
        logging.info("%s: %s", which, {k: v for k, v in rows[-1].items() if k != "examples"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", type=Path, required=True, help="a cell's run folder")
    parser.add_argument("--threads", type=int, default=48)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/loss_alignment.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    rows = measure(args.cell, args.threads)
    earlier = json.loads(args.out.read_text())["rows"] if args.out.exists() else []
    args.out.write_text(json.dumps({"rows": earlier + rows}, indent=1))
    print(
        "| prompt | scored answer | n | metric acc. | teacher-forced acc. | agreement | "
        "loss right / wrong | AUC |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        losses = " / ".join(
            "–" if v is None else f"{v:.3f}" for v in (r["loss_right"], r["loss_wrong"])
        )
        area = "–" if r["auc"] is None else f"{r['auc']:.2f}"
        print(
            f"| {r['prompt']} | `{r['scored_answer']}` | {r['n']} | {r['metric_accuracy']:.3f} | "
            f"{r['teacher_forced_accuracy']:.3f} | {r['agreement']:.2f} | {losses} | {area} |"
        )


if __name__ == "__main__":  # vLLM starts worker processes with spawn: keep this guard
    main()
