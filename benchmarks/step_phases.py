"""Time and peak memory of one GReaTer step, per phase (an embedded model, CPU), against the
paper's reference procedure on the same model and data.

One step on 8 BBH examples with 128 reasoning tokens and a shortlist of 3 candidates, for each
variant: ``reference`` (the published procedure: HF generation one example at a time, full
forward passes with full-vocabulary logits; ``reference_step.py``), our search with HF
``generate`` (batched) or with vLLM, in float32 or bfloat16. Each variant runs in its own process,
so that its peak memory (the process and its children: vLLM's engine) is its own. Prints a
Markdown table, then the bf16-vs-fp32 gradient agreement.

    python benchmarks/step_phases.py [--model NAME] [--variants reference,vllm-float32]
        [--skip-agreement] [--agreement-examples 4 --agreement-positions 3]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import PeakMemory, report, run_child, timed_step

VARIANTS = {
    # name: (reasoner, gradient model, dtype)
    "reference": ("hf-unbatched", "full-vocabulary", "float32"),
    "hf-float32": ("hf", "ours", "float32"),
    "hf-bfloat16": ("hf", "ours", "bfloat16"),
    "vllm-float32": ("vllm", "ours", "float32"),
    "vllm-bfloat16": ("vllm", "ours", "bfloat16"),
}


def one_step(model_name: str, task: str, examples: int, tokens: int, variant: str) -> dict:
    import torch

    import dspy_greater
    from dspy_greater.adapters.hf_gradient import HFGradientModel
    from dspy_greater.adapters.hf_reasoner import HFReasoner

    memory = PeakMemory()
    torch.manual_seed(0)
    reasoner_kind, gradient_kind, dtype = VARIANTS[variant]
    path = dspy_greater.embedded_model(model_name)
    data = dspy_greater.split(dspy_greater.load_bbh(task), train=examples, dev=0).train
    if gradient_kind == "full-vocabulary":
        sys.path.insert(0, str(Path(__file__).parent))
        from reference_step import FullVocabularyGradientModel, unbatched_reasoner

        model = FullVocabularyGradientModel(path, dtype=dtype)
        reasoner = unbatched_reasoner(path, dtype=dtype)
    else:
        model = HFGradientModel(path, dtype=dtype)
        if reasoner_kind == "vllm":
            from dspy_greater.adapters.vllm_engine import VLLMReasoner

            reasoner = VLLMReasoner(path, dtype=dtype)
        else:
            reasoner = HFReasoner(path, dtype=dtype, batch_size=examples)
    result, total = timed_step(data, reasoner, model, tokens)
    [step] = result.history
    return {
        "variant": variant,
        "reason": result.setup_seconds["reason"],
        "propose": step.seconds["propose"],
        "gradient": step.seconds["gradient"],
        "select": step.seconds["select"],
        "select_generation": step.seconds["select_generation"],
        "candidates": len(step.candidates),
        "chosen": step.prompt_after,
        "total": total,
        "peak_gib": memory.stop(),
    }


def gradient_agreement(
    model_name: str, task: str, examples: int, tokens: int, positions: int
) -> list[dict]:
    """Gradients of the same candidates in bf16 and fp32 (same reasoning): cosine, top-3 overlap."""
    import torch

    import dspy_greater
    from dspy_greater.adapters.hf_gradient import HFGradientModel
    from dspy_greater.adapters.hf_reasoner import HFReasoner
    from dspy_greater.chat_template import ChatTemplateRenderer
    from dspy_greater.search import PAPER_PROMPT, readable_tokens, shortlist_by_gradient

    path = dspy_greater.embedded_model(model_name)
    data = dspy_greater.split(dspy_greater.load_bbh(task), train=examples, dev=0).train
    fp32, bf16 = HFGradientModel(path), HFGradientModel(path, dtype="bfloat16")
    renderer = ChatTemplateRenderer(fp32.tokenizer)
    prompt = renderer.encode_prompt(PAPER_PROMPT, data[0])
    contexts = [renderer.render(prompt, ex).context for ex in data]
    reasoner = HFReasoner(path, dtype="bfloat16", batch_size=examples)
    reasonings = reasoner.generate(contexts, max_new_tokens=tokens)
    del reasoner
    rendered = [
        renderer.render(prompt, ex, r.token_ids) for ex, r in zip(data, reasonings, strict=True)
    ]
    allowed = readable_tokens(fp32.vocab, fp32.special_ids)
    rows = []
    for position in range(positions):
        ranked = fp32.ranked_next_tokens(rendered, position, allowed=allowed, limit=10)
        candidates = sorted({t for row in ranked for t in row} | {prompt[position]})
        grads = [
            m.candidate_gradients(
                rendered, position, candidates, answer_temperature=0.2, fluency_weight=0.2
            )
            for m in (fp32, bf16)
        ]
        a, b = (torch.tensor(g) for g in grads)
        top = [set(shortlist_by_gradient(candidates, g, 3)) for g in grads]
        rows.append(
            {
                "position": position,
                "candidates": len(candidates),
                "cosine": float(torch.nn.functional.cosine_similarity(a, b, dim=0)),
                "top3_shared": len(top[0] & top[1]),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="an embedded model's name")
    parser.add_argument("--task", default="sports_understanding")
    parser.add_argument("--examples", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument(
        "--variants",
        default="reference,hf-float32,vllm-float32,vllm-bfloat16",
        help=f"comma-separated, of {', '.join(VARIANTS)}",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    parser.add_argument(
        "--skip-agreement", action="store_true", help="skip the bf16-vs-fp32 gradient comparison"
    )
    parser.add_argument("--agreement-examples", type=int, default=None, help="default: --examples")
    parser.add_argument("--agreement-positions", type=int, default=6)
    args = parser.parse_args()
    if args.child:
        report(one_step(args.model, args.task, args.examples, args.tokens, args.child))
        return
    rows = []
    for variant in args.variants.split(","):
        rows.append(
            run_child(
                __file__,
                "--child",
                variant,
                "--model",
                args.model,
                "--task",
                args.task,
                "--examples",
                str(args.examples),
                "--tokens",
                str(args.tokens),
            )
        )
    from dspy_greater.models import EMBEDDED_MODELS

    title = EMBEDDED_MODELS[args.model].title
    print(
        f"One GReaTer step: {args.examples} examples of {args.task}, {args.tokens} reasoning "
        f"tokens, shortlist 3, {title}, CPU\n"
    )
    reference = next((r["total"] for r in rows if r["variant"] == "reference"), None)
    print(
        "| variant | reason (1 prompt) | propose | gradient | select (3 prompts: generate + "
        "score) | step | first step | vs reference | candidates | chosen | peak memory |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        ratio = f"{reference / r['total']:.1f}× faster" if reference else ""
        step = r["propose"] + r["gradient"] + r["select"]  # what every later step costs
        generation = r.get("select_generation")
        split = (
            f" ({generation:.1f} + {r['select'] - generation:.1f})"
            if generation is not None
            else ""
        )
        print(
            f"| {r['variant']} | {r['reason']:.1f} s | {r['propose']:.1f} s | "
            f"{r['gradient']:.1f} s | {r['select']:.1f} s{split} | {step:.1f} s | "
            f"{r['total']:.1f} s | {ratio} | {r['candidates']} | {r['chosen']!r} | "
            f"{r['peak_gib']:.2f} GiB |"
        )
    for r in rows:
        phases = {k: r[k] for k in ("reason", "propose", "gradient", "select")}
        print(f"\n{r['variant']}: slowest phase is {max(phases, key=phases.get)}")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    if args.skip_agreement:
        return
    examples = args.agreement_examples or args.examples
    print(
        f"\nbf16 vs fp32 gradients over the same candidates (same reasoning, {examples} "
        f"examples, {title})\n"
    )
    print("| position | candidates | cosine | shortlist (top 3) shared |")
    print("| --- | --- | --- | --- |")
    agreement = gradient_agreement(
        args.model, args.task, examples, args.tokens, args.agreement_positions
    )
    if args.out:
        saved = json.loads(Path(args.out).read_text())
        Path(args.out).write_text(json.dumps({**saved, "agreement": agreement}, indent=1))
    for r in agreement:
        print(f"| {r['position']} | {r['candidates']} | {r['cosine']:.4f} | {r['top3_shared']}/3 |")


if __name__ == "__main__":
    main()
