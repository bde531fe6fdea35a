"""Answer a few BIG-Bench Hard questions with the embedded SmolLM2 model, paper style.

The model reasons after the GReaTer paper's initial prompt, then the answer is extracted by
continuing its message with ``Therefore, the final answer is`` (no trailing space: BPE puts
the space inside the next token). Runs on CPU with nothing downloaded.

    python examples/demo.py --task sports_understanding --n 6
"""

from __future__ import annotations

import argparse
import logging
import textwrap
import time

import dspy_greater
from dspy_greater.adapters.hf import HFReasoner

PAPER_PROMPT = (
    "Use proper logical reasoning and think step by step. Finally give the actual correct answer."
)
EXTRACTOR = "\nTherefore, the final answer is"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sports_understanding",
                        help=f"a shipped BBH task ({', '.join(dspy_greater.shipped_bbh_tasks())}) "
                        "or the path of a BBH JSON file")
    parser.add_argument("--n", type=int, default=6, help="questions to answer")
    parser.add_argument("--reasoning-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    start = time.perf_counter()
    examples = dspy_greater.load_bbh(args.task)
    questions = dspy_greater.split(examples, train=args.n, dev=0, seed=args.seed).train
    reasoner = HFReasoner(dspy_greater.default_model(), dtype="bfloat16", batch_size=args.n)
    loaded = time.perf_counter()

    conversations = [
        [{"role": "user", "content": f"{ex.question}\n{PAPER_PROMPT}"}] for ex in questions
    ]
    reasonings = reasoner.chat(conversations, max_new_tokens=args.reasoning_tokens)
    continued = [
        conv + [{"role": "assistant", "content": r.text.rstrip() + EXTRACTOR}]
        for conv, r in zip(conversations, reasonings)
    ]
    answers = reasoner.chat(continued, max_new_tokens=8, stop=["\n"], continue_final_message=True)
    done = time.perf_counter()

    correct = 0
    for i, (ex, reasoning, answer) in enumerate(zip(questions, reasonings, answers), 1):
        ok = dspy_greater.bbh_answer_matches(answer.text, ex.answer)
        correct += ok
        print(f"\n[{i}] {ex.question}")
        print(textwrap.indent(textwrap.fill(reasoning.text.strip(), 96), "    | "))
        print(f"    answer: {answer.text.strip()!r}   gold: {ex.answer!r}   "
              f"{'correct' if ok else 'wrong'}")

    n = len(questions)
    accuracy = correct / n
    print(f"\n{args.task}: {correct}/{n} correct = {accuracy:.2f} "
          f"± {dspy_greater.standard_error(accuracy, n):.2f} (standard error); "
          f"majority-class rate on the whole task {dspy_greater.majority_class_rate(examples):.2f}")
    print(f"model load {loaded - start:.1f} s, generation {done - loaded:.1f} s")


if __name__ == "__main__":
    main()
