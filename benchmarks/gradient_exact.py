"""Does the one-hot gradient rank candidate tokens like the exact loss change of substituting
them? Per prompt position of the paper's starting prompt, on an embedded model and a BBH task,
with the reasoning fixed (the model's own chains): the Spearman correlation of the first-order
loss change with the exact one over the candidates GReaTer would consider (each example's likeliest
readable next tokens, plus the current token), and how often the exact best candidate is in the
gradient's shortlist of 3 (GReaTer re-scores only those). Chance is 0 and 3 / candidates.

The test suite asserts the same on SmolLM2 (4 sports_understanding examples, 32 tokens: a mean
of 0.18); this measures it where the exact passes are minutes long, for issue 20.

    python benchmarks/gradient_exact.py --model qwen2.5-coder-1.5b [--task NAME] [--examples 4]
        [--tokens 32] [--positions 8] [--per-example 8] [--renderer chat|adapter] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from common import git_commit, load_bbh


def spearman(a: list[float], b: list[float]) -> float:
    import torch

    ranks = [torch.tensor(x, dtype=torch.float64).argsort().argsort().double() for x in (a, b)]
    return float(torch.corrcoef(torch.stack(ranks))[0, 1])


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    import dspy_greater
    from dspy_greater.adapters.hf_gradient import HFGradientModel
    from dspy_greater.adapters.hf_reasoner import HFReasoner
    from dspy_greater.chat_template import ChatTemplateRenderer
    from dspy_greater.models import registered_dtype
    from dspy_greater.search import PAPER_PROMPT, readable_tokens, shortlist_by_gradient

    started = time.perf_counter()
    path, dtype = dspy_greater.models.resolve_model(args.model), registered_dtype(args.model)
    model = HFGradientModel(path, dtype=dtype)
    renderer: Any
    if args.renderer == "adapter":  # what GReaTer(...).compile renders: DSPy's messages
        from optimizers_bbh import data_path

        from dspy_greater import ForcedExtractionAdapter, load_task
        from dspy_greater.renderers import AdapterRenderer

        task = load_task(data_path(args.task))
        data = task.splits.train[: args.examples]
        signature = task.program(PAPER_PROMPT).predict.signature
        renderer = AdapterRenderer(signature, model.tokenizer, ForcedExtractionAdapter())
    else:  # the paper's: the chat template, the prompt after the question
        data = dspy_greater.split(load_bbh(args.task), train=args.examples, dev=0).train
        renderer = ChatTemplateRenderer(model.tokenizer)
    prompt = renderer.encode_prompt(PAPER_PROMPT, data[0])
    reasoner = HFReasoner(path, dtype=dtype, batch_size=args.examples)
    chains = reasoner.chat(
        [renderer.messages(prompt, ex) for ex in data],
        max_new_tokens=args.tokens,
        stop=renderer.stop,
        continue_final_message=renderer.continue_final_message,
    )
    del reasoner
    rendered = [
        renderer.render(prompt, ex, c.token_ids) for ex, c in zip(data, chains, strict=True)
    ]
    allowed = readable_tokens(model.vocab, model.special_ids)
    loss_args = dict(answer_temperature=0.2, fluency_weight=0.2)
    positions = []
    for position in range(min(args.positions, len(prompt))):
        ranked = model.ranked_next_tokens(
            rendered, position, allowed=allowed, limit=args.per_example
        )
        candidates = sorted({t for row in ranked for t in row} | {prompt[position]})
        gradients = model.candidate_gradients(rendered, position, candidates, **loss_args)
        exact = []
        for j in range(len(candidates)):
            weights = torch.zeros(len(candidates))
            weights[j] = 1.0
            with torch.no_grad():
                exact.append(
                    sum(
                        float(model.relaxed_loss(ex, position, candidates, weights, **loss_args))
                        for ex in rendered
                    )
                )
        best = candidates[min(range(len(candidates)), key=exact.__getitem__)]
        shortlist = shortlist_by_gradient(candidates, gradients, 3)
        positions.append(
            {
                "position": position,
                "token": model.tokenizer.decode([prompt[position]]),
                "candidates": len(candidates),
                "spearman": spearman(gradients, exact),
                "exact_best_in_shortlist": best in shortlist,
                "chance_in_shortlist": min(1.0, 3 / len(candidates)),
            }
        )
        print(json.dumps(positions[-1]), flush=True)
    correlations = [p["spearman"] for p in positions]
    return {
        "model": args.model,
        "dtype": dtype,
        "task": args.task,
        "renderer": args.renderer,
        "examples": args.examples,
        "tokens": args.tokens,
        "per_example": args.per_example,
        "positions": positions,
        "mean_spearman": statistics.mean(correlations),
        "best_in_shortlist": statistics.mean(p["exact_best_in_shortlist"] for p in positions),
        "chance_in_shortlist": statistics.mean(p["chance_in_shortlist"] for p in positions),
        "seconds": time.perf_counter() - started,
        "commit": git_commit(),
        "cpu": str(torch.backends.cpu.get_cpu_capability()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="an embedded model's name")
    parser.add_argument("--task", default="sports_understanding")
    parser.add_argument("--examples", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--positions", type=int, default=8)
    parser.add_argument("--per-example", type=int, default=8, help="next tokens per example")
    parser.add_argument(
        "--renderer",
        choices=("chat", "adapter"),
        default="chat",
        help="chat: the paper's chat template; adapter: DSPy's messages, as GReaTer compiles",
    )
    parser.add_argument("--out", default=None, help="append the row to this JSON file")
    args = parser.parse_args()
    row = measure(args)
    print(
        f"{args.model} on {args.task} ({args.examples} examples, {args.tokens} tokens): mean "
        f"Spearman {row['mean_spearman']:.3f} over {len(row['positions'])} positions; exact best "
        f"in the gradient's shortlist of 3: {row['best_in_shortlist']:.2f} "
        f"(chance {row['chance_in_shortlist']:.2f}); {row['seconds'] / 60:.1f} min"
    )
    if args.out:
        out = Path(args.out)
        rows = json.loads(out.read_text())["rows"] if out.exists() else []
        out.write_text(json.dumps({"rows": [*rows, row]}, indent=1))


if __name__ == "__main__":
    main()
