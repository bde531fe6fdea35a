"""GReaTer on two-stage DSPy programs with the embedded SmolLM2, on CPU.

Two pipelines over a BIG-Bench Hard task shipped with the package:

- ``restate``: restate the question in plain words, then answer from the question and the
  restatement;
- ``extract``: list the facts that decide the question, then answer from them.

Each stage is a ``ChainOfThought`` (GReaTer reasons through it); the answer is typed with the
task's labels. The script first measures how often the starting program passes on the trainset
(the runs whose traces give the first stage its targets), then compiles every stage with
``GReaTer`` and scores start and result on a test split never used for selection.

    python examples/pipelines.py [--pipeline restate|extract|both] [--task sports_understanding]
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from typing import Any, Literal

import dspy

import dspy_greater
from dspy_greater import ForcedExtractionAdapter, GReaTer, stats
from dspy_greater.lm import local_lm


def answer_type(examples: list[dspy.Example]) -> Any:
    labels = dspy_greater.data.closed_labels(examples)
    return Literal[labels] if labels else str


class RestateThenAnswer(dspy.Module):
    """Restate the question, then answer from both."""

    def __init__(self, answer: Any) -> None:
        super().__init__()
        self.restate = dspy.ChainOfThought(
            dspy.Signature(
                {"question": (str, dspy.InputField()), "restatement": (str, dspy.OutputField())},
                "Restate the question in plain words.",
            )
        )
        self.answer = dspy.ChainOfThought(
            dspy.Signature(
                {
                    "question": (str, dspy.InputField()),
                    "restatement": (str, dspy.InputField()),
                    "answer": (answer, dspy.OutputField()),
                },
                "Answer the question.",
            )
        )

    def forward(self, question: str) -> dspy.Prediction:
        restatement = self.restate(question=question).restatement
        return self.answer(question=question, restatement=restatement)


class ExtractThenDecide(dspy.Module):
    """List the deciding facts, then answer from them."""

    def __init__(self, answer: Any) -> None:
        super().__init__()
        self.extract = dspy.ChainOfThought(
            dspy.Signature(
                {"question": (str, dspy.InputField()), "facts": (str, dspy.OutputField())},
                "List the facts that decide the question.",
            )
        )
        self.decide = dspy.ChainOfThought(
            dspy.Signature(
                {
                    "question": (str, dspy.InputField()),
                    "facts": (str, dspy.InputField()),
                    "answer": (answer, dspy.OutputField()),
                },
                "Answer the question from the facts.",
            )
        )

    def forward(self, question: str) -> dspy.Prediction:
        facts = self.extract(question=question).facts
        return self.decide(question=question, facts=facts)


PIPELINES = {"restate": RestateThenAnswer, "extract": ExtractThenDecide}


def run(name: str, args: argparse.Namespace) -> dict[str, Any]:
    examples = dspy_greater.load_bbh(args.task)
    splits = dspy_greater.split(examples, train=args.train, dev=args.dev, seed=args.seed)
    test = splits.test[: args.test]
    program = PIPELINES[name](answer_type(examples))
    started = time.perf_counter()
    pass_rate = stats.accuracy(program, splits.train)
    run_dir = os.path.join(args.run_root, name) if args.run_root else None
    optimizer = GReaTer(
        metric=dspy_greater.bbh_metric, auto="light", steps=args.steps, run_dir=run_dir
    )
    compiled = optimizer.compile(
        program,
        trainset=splits.train,
        valset=splits.dev,
        resume=bool(run_dir and os.path.exists(run_dir)),
    )
    before, after = stats.accuracy(program, test), stats.accuracy(compiled, test)
    return {
        "pipeline": name,
        "task": args.task,
        "pass_rate": pass_rate,
        "train": len(splits.train),
        "test_size": len(test),
        "before": before,
        "after": after,
        "majority": stats.majority_class_rate(test),
        "stages": compiled.greater_run.stages,
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default="both", choices=[*PIPELINES, "both"])
    parser.add_argument(
        "--task",
        default="sports_understanding",
        help=f"a shipped BBH task ({', '.join(dspy_greater.shipped_bbh_tasks())}) "
        "or the path of a BBH JSON file",
    )
    parser.add_argument("--steps", type=int, default=4, help="GReaTer steps per stage")
    parser.add_argument("--train", type=int, default=12)
    parser.add_argument("--dev", type=int, default=16)
    parser.add_argument("--test", type=int, default=60, help="test questions (never selected on)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-root", default=None, help="keep (and resume) runs under this folder")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("dspy", "vllm", "httpx", "LiteLLM"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    dspy.configure(lm=local_lm(max_tokens=128), adapter=ForcedExtractionAdapter())
    names = list(PIPELINES) if args.pipeline == "both" else [args.pipeline]
    results = [run(name, args) for name in names]
    se = stats.standard_error
    print(
        "\n| pipeline | task | passing on train | test: start | test: GReaTer | majority | "
        "time |\n| --- | --- | --- | --- | --- | --- | --- |"
    )
    for r in results:
        n = r["test_size"]
        print(
            f"| {r['pipeline']} | {r['task']} | {r['pass_rate']:.2f} of {r['train']} | "
            f"{r['before']:.3f} ± {se(r['before'], n):.3f} | {r['after']:.3f} ± "
            f"{se(r['after'], n):.3f} | {r['majority']:.3f} | {r['seconds']:.0f} s |"
        )
    for r in results:
        print(f"\n{r['pipeline']}:")
        for stage in r["stages"]:
            what = (
                f"skipped: {stage.skipped}"
                if stage.skipped
                else (
                    f"{stage.examples} targets from {stage.targets}; validation "
                    f"{stage.validation[stage.start_instructions]:.3f} -> "
                    f"{stage.validation[stage.instructions]:.3f}"
                )
            )
            print(
                f"  {stage.predictor}: {stage.start_instructions!r} -> "
                f"{stage.instructions!r} ({what})"
            )


if __name__ == "__main__":  # vLLM starts worker processes with spawn: keep this guard
    main()
