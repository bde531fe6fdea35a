"""Run the GReaTer search (no DSPy) on a BBH task with the embedded SmolLM2, and print each step.

    python examples/search_bbh.py --task sports_understanding --steps 4
    python examples/search_bbh.py --task ../shared/data/bbh/causal_judgement.json --budget heavy

The task is a shipped BBH task name or the path of any BBH JSON file.
"""

from __future__ import annotations

import argparse
import logging

import dspy_greater
from dspy_greater.adapters import make_reasoner
from dspy_greater.adapters.hf_gradient import HFGradientModel
from dspy_greater.adapters.same_model import check_same_model
from dspy_greater.renderers import ChatTemplateRenderer
from dspy_greater.search import PAPER_PROMPT, GreaterConfig, run_greater


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sports_understanding")
    parser.add_argument(
        "--budget", choices=["light", "medium", "heavy"], default="light", help="heavy: the paper's"
    )
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--examples", type=int, help="training examples (the budget's)")
    parser.add_argument("--tokens", type=int, help="reasoning tokens (the budget's)")
    parser.add_argument(
        "--placement", choices=["after_question", "before_question"], default="after_question"
    )
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument(
        "--backend",
        choices=["auto", "vllm", "hf"],
        default="auto",
        help="reasoner: vLLM when installed (auto), or transformers",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    overrides = {"steps": args.steps, "seed": args.seed}
    if args.examples:
        overrides["num_examples"] = args.examples
    if args.tokens:
        overrides["max_reasoning_tokens"] = args.tokens
    config = GreaterConfig.budget(args.budget, **overrides)
    examples = dspy_greater.load_bbh(args.task)
    train = dspy_greater.split(examples, train=config.num_examples, dev=0, seed=args.seed).train

    path = dspy_greater.default_model()
    model = HFGradientModel(path, dtype=args.dtype)
    reasoner = make_reasoner(path, backend=args.backend, dtype=args.dtype)
    check_same_model(reasoner, model)
    result = run_greater(
        train,
        initial_prompt=PAPER_PROMPT,
        config=config,
        renderer=ChatTemplateRenderer(model.tokenizer, placement=args.placement),
        reasoner=reasoner,
        gradient_model=model,
    )

    print(
        f"\nstart  score {result.initial_score.value:.3f} "
        f"(mistakes {result.initial_score.mistake_rate:.2f}): {result.initial_prompt!r}"
    )
    for h in result.history:
        timing = " ".join(f"{k} {v:.0f}s" for k, v in h.seconds.items())
        print(
            f"step {h.step:>3} pos {h.position:>2} k={h.top_k:<3} {len(h.candidates):>3} cand. "
            f"score {h.score_after:.3f} [{timing}]: {h.prompt_after!r}"
        )
    print("\nbest prompts on the training examples (lower is better):")
    for text, _, score in result.top_prompts[:5]:
        print(f"  {score.value:.3f} (mistakes {score.mistake_rate:.2f}): {text!r}")


if __name__ == "__main__":  # vLLM starts worker processes with spawn: keep this guard
    main()
