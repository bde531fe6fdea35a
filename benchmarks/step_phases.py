"""Time and peak memory of one GReaTer step, per phase, fp32 vs bf16 (SmolLM2, CPU).

One step on 8 BBH examples with 128 reasoning tokens, HF `generate` as the reasoner. Each
precision runs in its own process so that peak RSS is its own. Prints a Markdown table.

    python benchmarks/step_phases.py [--task sports_understanding] [--examples 8] [--tokens 128]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def one_step(task: str, examples: int, tokens: int, dtype: str) -> dict:
    import torch

    import dspy_greater
    from dspy_greater.adapters.hf import HFGradientModel, HFReasoner
    from dspy_greater.chat_template import PAPER_PROMPT, ChatTemplateRenderer
    from dspy_greater.search import GreaterConfig, run_greater

    torch.manual_seed(0)
    path = dspy_greater.default_model()
    data = dspy_greater.split(dspy_greater.load_bbh(task), train=examples, dev=0).train
    model = HFGradientModel(path, dtype=dtype)
    reasoner = HFReasoner(path, dtype=dtype, batch_size=examples)
    config = GreaterConfig.cpu(steps=1, num_examples=examples, max_reasoning_tokens=tokens)
    started = time.perf_counter()
    result = run_greater(data, initial_prompt=PAPER_PROMPT, config=config,
                         renderer=ChatTemplateRenderer(model.tokenizer), reasoner=reasoner,
                         gradient_model=model, progress=False)
    total = time.perf_counter() - started
    [step] = result.history
    return {
        "dtype": dtype,
        "reason": result.setup_seconds["reason"],
        "propose": step.seconds["propose"],
        "gradient": step.seconds["gradient"],
        "select": step.seconds["select"],
        "candidates": len(step.candidates),
        "total": total,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def gradient_agreement(task: str, examples: int, tokens: int, positions: int = 6) -> list[dict]:
    """Gradients of the same candidates in bf16 and fp32 (same reasoning): cosine, top-3 overlap."""
    import torch

    import dspy_greater
    from dspy_greater.adapters.hf import HFGradientModel, HFReasoner
    from dspy_greater.chat_template import PAPER_PROMPT, ChatTemplateRenderer
    from dspy_greater.search import readable_tokens, shortlist_by_gradient

    path = dspy_greater.default_model()
    data = dspy_greater.split(dspy_greater.load_bbh(task), train=examples, dev=0).train
    fp32, bf16 = HFGradientModel(path), HFGradientModel(path, dtype="bfloat16")
    renderer = ChatTemplateRenderer(fp32.tokenizer)
    prompt = renderer.encode_prompt(PAPER_PROMPT, data[0])
    contexts = [renderer.render(prompt, ex).context for ex in data]
    reasonings = HFReasoner(path, batch_size=examples).generate(contexts, max_new_tokens=tokens)
    rendered = [renderer.render(prompt, ex, r.token_ids) for ex, r in zip(data, reasonings)]
    allowed = readable_tokens(fp32.vocab, fp32.special_ids)
    rows = []
    for position in range(positions):
        ranked = fp32.ranked_next_tokens(rendered, position, allowed=allowed, limit=10)
        candidates = sorted({t for row in ranked for t in row} | {prompt[position]})
        grads = [m.candidate_gradients(rendered, position, candidates, answer_temperature=0.2,
                                       fluency_weight=0.2) for m in (fp32, bf16)]
        a, b = (torch.tensor(g) for g in grads)
        top = [set(shortlist_by_gradient(candidates, g, 3)) for g in grads]
        rows.append({"position": position, "candidates": len(candidates),
                     "cosine": float(torch.nn.functional.cosine_similarity(a, b, dim=0)),
                     "top3_shared": len(top[0] & top[1])})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sports_understanding")
    parser.add_argument("--examples", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--skip-agreement", action="store_true",
                        help="skip the bf16-vs-fp32 gradient comparison")
    args = parser.parse_args()
    if args.child:
        print("RESULT", json.dumps(one_step(args.task, args.examples, args.tokens, args.child)))
        return
    rows = []
    for dtype in args.dtypes.split(","):
        out = subprocess.run([sys.executable, __file__, "--child", dtype, "--task", args.task,
                              "--examples", str(args.examples), "--tokens", str(args.tokens)],
                             check=True, capture_output=True, text=True).stdout
        # The engines may log to stdout too: take the marked line.
        rows.append(json.loads(next(line[len("RESULT "):] for line in out.splitlines()
                                    if line.startswith("RESULT "))))
    print(f"One GReaTer step: {args.examples} examples of {args.task}, {args.tokens} reasoning "
          "tokens, SmolLM2-135M, CPU, HF generate\n")
    print("| precision | reason (1 prompt) | propose | gradient | select (3 prompts) | "
          "step total | candidates | peak RSS |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['dtype']} | {r['reason']:.1f} s | {r['propose']:.1f} s | {r['gradient']:.1f} s "
              f"| {r['select']:.1f} s | {r['total']:.1f} s | {r['candidates']} "
              f"| {r['peak_rss_gb']:.1f} GB |")
    for r in rows:
        phases = {k: r[k] for k in ("reason", "propose", "gradient", "select")}
        print(f"\n{r['dtype']}: slowest phase is {max(phases, key=phases.get)}")
    if args.skip_agreement:
        return
    print("\nbf16 vs fp32 gradients over the same candidates (same reasoning)\n")
    print("| position | candidates | cosine | shortlist (top 3) shared |")
    print("| --- | --- | --- | --- |")
    for r in gradient_agreement(args.task, args.examples, args.tokens):
        print(f"| {r['position']} | {r['candidates']} | {r['cosine']:.4f} | {r['top3_shared']}/3 |")


if __name__ == "__main__":
    main()
