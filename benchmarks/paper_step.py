"""What one GReaTer step costs at the paper's settings with our engines: each phase's time, the
reasoning's tokens per second and the peak memory, on a model of a given size made from a config
with random weights (no weights need to travel).

The paper's settings (the ``heavy`` budget): 50 examples, top-k 40, a shortlist of 3, up to 1,024
reasoning tokens. The model folder (config, random weights, a byte-level BPE tokenizer trained
here, a chat template) is written once and both engines load it: the reasoner (transformers'
``generate``, or vLLM where installed) and the gradient model. The model has no end-of-sequence
token, so every chain runs to the full budget (what ``ignore_eos`` does): real models stop
earlier, so the figures are an upper bound for a model of this size. Needs torch and
transformers, not DSPy.

    python benchmarks/paper_step.py --size tiny              # a CPU, a minute (a test runs it)
    python benchmarks/paper_step.py --size llama-3-8b        # one GPU (about 40 GB)
        [--reasoner hf|vllm] [--device auto|cpu|cuda] [--examples 50] [--tokens 1024]
        [--folder DIR] [--out rows.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from datetime import date
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a source checkout

# Model shapes (Llama architecture). llama-3-8b is Meta-Llama-3-8B's: 8.0B parameters.
SIZES = {
    "tiny": dict(  # heads of 64: vLLM's CPU attention takes no smaller
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=2048,
    ),
    "llama-3-8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        rope_theta=500000.0,
    ),
}
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
WORDS = (
    "the a is are was were of to in on and or not if then yes no true false which what how many "
    "answer question step think carefully first next finally because so therefore count each "
    "object left right before after red blue green ball book box person said lies tells truth"
).split()


def make_model_folder(folder: Path, size: str, seed: int = 0) -> Path:
    """A Llama model of ``size`` with random weights (seeded) and a byte-level BPE tokenizer
    trained on a made-up corpus, saved to ``folder`` (kept: a second run reuses it)."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if (folder / "config.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    shape = SIZES[size]
    rng = __import__("random").Random(seed)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(30)) + "." for _ in range(2000)]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        corpus, vocab_size=min(shape["vocab_size"], 2048), special_tokens=["<|pad|>"]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, pad_token="<|pad|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    config = LlamaConfig(
        **shape,
        max_position_embeddings=4096,
        bos_token_id=None,
        eos_token_id=None,  # no end of sequence: every chain runs to the full budget
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):  # an 8B model initialises in seconds on a GPU, minutes on a CPU
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.generation_config.eos_token_id = None
    model.save_pretrained(folder)
    del model
    return folder


def questions(n: int) -> list[Any]:
    """``n`` made-up yes/no questions (objects with ``question`` and ``answer``, what the
    chat-template renderer reads)."""
    return [
        SimpleNamespace(question=f"Is {k} + {k + 3} an even number?", answer="no") for k in range(n)
    ]


def peak_memory_gib(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def one_step(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from dspy_greater.adapters.hf_gradient import HFGradientModel
    from dspy_greater.adapters.hf_loading import resolve_device
    from dspy_greater.chat_template import ChatTemplateRenderer
    from dspy_greater.search import PAPER_PROMPT, GreaterConfig, run_greater

    device = resolve_device(args.device)
    dtype = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    started = time.perf_counter()
    folder = make_model_folder(Path(args.folder or f"build/paper-step-{args.size}"), args.size)
    made = time.perf_counter() - started
    started = time.perf_counter()
    if args.reasoner == "vllm":
        from dspy_greater.adapters.vllm_engine import VLLMReasoner

        reasoner: Any = VLLMReasoner(folder, dtype=dtype, max_model_len=4096)
    else:
        from dspy_greater.adapters.hf_reasoner import HFReasoner

        reasoner = HFReasoner(folder, dtype=dtype, device=device, batch_size=args.examples)
    gradient_model = HFGradientModel(folder, dtype=dtype, device=device)
    loaded = time.perf_counter() - started
    config = GreaterConfig.budget(
        "heavy", steps=1, num_examples=args.examples, max_reasoning_tokens=args.tokens
    )
    chains: dict[Any, tuple[int, ...]] = {}
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = run_greater(
        questions(args.examples),
        initial_prompt=PAPER_PROMPT,
        renderer=ChatTemplateRenderer(gradient_model.tokenizer),
        reasoner=reasoner,
        gradient_model=gradient_model,
        config=config,
        reasoning_cache=chains,
        progress=False,
    )
    total = time.perf_counter() - started
    [step] = result.history
    first = list(chains.values())[: args.examples]  # the start's chains (setup), first in
    lengths = [len(ids) for ids in chains.values()]
    reason = result.setup_seconds["reason"]
    return {
        "size": args.size,
        "parameters_m": round(sum(p.numel() for p in gradient_model.model.parameters()) / 1e6, 1),
        "device": torch.cuda.get_device_name()
        if device.startswith("cuda")
        else platform.processor() or "cpu",
        "reasoner": args.reasoner,
        "gradient_model": "transformers",
        "dtype": dtype,
        "examples": args.examples,
        "top_k": config.top_k,
        "shortlist": config.shortlist,
        "max_reasoning_tokens": args.tokens,
        "mean_chain_tokens": sum(lengths) / len(lengths),
        "chains": len(lengths),
        "model_folder_s": made,
        "load_s": loaded,
        "reason_s": reason,
        "reason_tokens_per_s": sum(len(ids) for ids in first) / reason if reason else None,
        "score_s": result.setup_seconds["score"],
        "propose_s": step.seconds["propose"],
        "gradient_s": step.seconds["gradient"],
        "select_s": step.seconds["select"],
        "select_generation_s": step.seconds["select_generation"],
        "step_s": total,
        "candidates": len(step.candidates),
        "peak_gib": peak_memory_gib(device),
        # vLLM's engine runs in processes of its own: not counted here
        "peak_of": "torch's CUDA allocator, this process"
        if device.startswith("cuda")
        else "resident memory, this process",
        "date": date.today().isoformat(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="tiny")
    parser.add_argument("--reasoner", choices=("hf", "vllm"), default="hf")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on a GPU, else float32")
    parser.add_argument("--examples", type=int, default=50, help="the paper's 50")
    parser.add_argument("--tokens", type=int, default=1024, help="the paper's 1,024")
    parser.add_argument("--folder", default=None, help="the model folder (default: build/)")
    parser.add_argument("--out", default=None, help="write the row as JSON here")
    args = parser.parse_args()
    row = one_step(args)
    print(f"| {' | '.join(row)} |")
    print(f"|{'---|' * len(row)}")
    print(f"| {' | '.join(f'{v:.2f}' if isinstance(v, float) else str(v) for v in row.values())} |")
    print(
        f"One step ({row['examples']} examples, top-k {row['top_k']}, shortlist "
        f"{row['shortlist']}, chains of {row['mean_chain_tokens']:.0f} tokens: an upper bound): "
        f"{row['step_s']:.1f} s on {row['device']} ({row['reasoner']} reasoner, transformers "
        f"gradient model, {row['dtype']}), peak {row['peak_gib']:.1f} GiB."
    )
    if args.out:
        Path(args.out).write_text(json.dumps(row, indent=1) + "\n")


if __name__ == "__main__":
    main()
