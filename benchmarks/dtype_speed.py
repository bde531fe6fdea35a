"""bfloat16 against float32 on this machine, for both engines: is bfloat16 the faster here?

Each cell runs in its own process, with a time limit (a cell past it is reported as not finished):
- *gradient pass*: the transformers model, a forward and a backward pass over ``--tokens`` random
  token ids, the gradient taken on the input embeddings, the loss on the last 20 tokens (as the
  search takes it); and a no-grad forward over the same ids. Also with bfloat16 weights
  computing in float32 (``adapters/float32_compute.py``);
- *generation*: vLLM, ``--prompts`` chat prompts × ``--new-tokens`` tokens in one call, greedy;
- *pair* (float32 only): both in one process, as GReaTer holds them: the vLLM engine generates,
  then the gradient model loads beside it (through the library's memory check) and runs the
  gradient pass. Does float32 for both fit here? Run it with ``VLLM_CPU_KVCACHE_SPACE`` set to
  try a smaller KV cache (the row records it).

Prints the CPU's capability as torch sees it (``AVX512``, ``AVX2``, ...) and what
``adapters.hardware.fast_bfloat16()`` chooses from it.

    python benchmarks/dtype_speed.py [--model qwen2.5-coder-1.5b] [--cells pair] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import MARK, PeakMemory, report

DTYPES = ("float32", "bfloat16")
FLOAT32_COMPUTE = "bfloat16-weights-float32-compute"  # the gradient model's where bf16 is slow
CELLS = ("gradient", "generation")
PAIR_DTYPES = ("float32",)


def gradient_pass(model: Any, tokens: int) -> dict[str, float]:
    """A no-grad forward, then a forward and backward to the input embeddings, over ``tokens``."""
    import torch

    ids = torch.randint(100, 10_000, (1, tokens), generator=torch.Generator().manual_seed(0))
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    clock = time.perf_counter()
    with torch.no_grad():
        model(input_ids=ids)
    forward = time.perf_counter() - clock
    clock = time.perf_counter()
    logits = model(inputs_embeds=embeds).logits[0, -21:-1].float()
    torch.autograd.grad(torch.nn.functional.cross_entropy(logits, ids[0, -20:]), embeds)
    return {"forward_seconds": forward, "forward_backward_seconds": time.perf_counter() - clock}


def gradient_cell(args: argparse.Namespace, dtype: str) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    import dspy_greater
    from dspy_greater.adapters.float32_compute import compute_in_float32

    memory = PeakMemory()
    upcast = dtype == FLOAT32_COMPUTE
    model = AutoModelForCausalLM.from_pretrained(
        dspy_greater.embedded_model(args.model),
        dtype=torch.bfloat16 if upcast else getattr(torch, dtype),
    ).requires_grad_(False)
    if upcast:
        compute_in_float32(model)
    return {**gradient_pass(model, args.tokens), "peak_gib": memory.stop()}


def generate(args: argparse.Namespace, reasoner: Any) -> dict[str, float]:
    chats = [
        [{"role": "user", "content": f"Explain step by step why {i} + {i} = {2 * i}."}]
        for i in range(args.prompts)
    ]
    clock = time.perf_counter()
    completions = reasoner.chat(chats, max_new_tokens=args.new_tokens)
    seconds = time.perf_counter() - clock
    tokens = sum(len(c.token_ids) for c in completions)
    return {"seconds": seconds, "tokens": tokens, "tokens_per_second": tokens / seconds}


def generation_cell(args: argparse.Namespace, dtype: str) -> dict[str, Any]:
    import dspy_greater
    from dspy_greater.adapters.vllm_engine import VLLMReasoner

    memory = PeakMemory()
    reasoner = VLLMReasoner(dspy_greater.embedded_model(args.model), dtype=dtype)
    generated = generate(args, reasoner)
    peak = memory.stop()  # vLLM's processes included
    reasoner.close()
    return {**generated, "peak_gib": peak}


def pair_cell(args: argparse.Namespace, dtype: str) -> dict[str, Any]:
    import psutil

    import dspy_greater
    from dspy_greater.adapters.hf_gradient import shared_gradient_model
    from dspy_greater.adapters.vllm_engine import VLLMReasoner

    folder = dspy_greater.embedded_model(args.model)
    memory = PeakMemory()
    reasoner = VLLMReasoner(folder, dtype=dtype)
    generated = generate(args, reasoner)
    available = psutil.virtual_memory().available / 2**30  # what the gradient model is offered
    gradient_model = shared_gradient_model(folder, dtype=dtype)  # NotEnoughMemory: no row
    passed = gradient_pass(gradient_model.model, args.tokens)
    peak = memory.stop()
    reasoner.close()
    return {
        **generated,
        **passed,
        "available_gib_before_gradient_model": available,
        "peak_gib": peak,
    }


def one_cell(args: argparse.Namespace, cell: str, dtype: str) -> dict[str, Any]:
    """In the parent: the cell in a new process, or a row saying it passed the time limit."""
    command = [sys.executable, __file__, *sys.argv[1:], "--child", f"{cell}:{dtype}"]
    row: dict[str, Any] = {"cell": cell, "dtype": dtype, "limit_seconds": args.limit}
    row["kv_cache_gib"] = os.environ.get("VLLM_CPU_KVCACHE_SPACE", "vLLM's default")
    try:
        out = subprocess.run(
            command, check=True, capture_output=True, text=True, timeout=args.limit
        ).stdout
    except subprocess.TimeoutExpired:
        subprocess.run(["pkill", "-9", "-f", "VLLM::"], check=False)  # the engine's orphans
        return {**row, "finished": False}
    except subprocess.CalledProcessError as failed:  # e.g. NotEnoughMemory: the reason is the row
        subprocess.run(["pkill", "-9", "-f", "VLLM::"], check=False)
        error = failed.stderr.strip().splitlines()[-1] if failed.stderr.strip() else "no output"
        return {**row, "finished": False, "error": error}
    reported = next(line[len(MARK) :] for line in out.splitlines() if line.startswith(MARK))
    return {**row, "finished": True, **json.loads(reported)}


def table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    def cell(cell: str, dtype: str, show: Any) -> str:
        row = next((r for r in rows if (r["cell"], r["dtype"]) == (cell, dtype)), None)
        if row is None:
            return "not run"
        if row["finished"]:
            return show(row)
        return row.get("error") or f"not finished in {row['limit_seconds']} s"

    lines = [
        f"| dtype | no-grad forward ({args.tokens} tokens) | forward + backward | "
        f"peak memory | vLLM, {args.prompts} × {args.new_tokens} tokens | peak memory |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for dtype in DTYPES:
        forward = cell("gradient", dtype, lambda r: f"{r['forward_seconds']:.1f} s")
        backward = cell("gradient", dtype, lambda r: f"{r['forward_backward_seconds']:.1f} s")
        generation = cell("generation", dtype, lambda r: f"{r['tokens_per_second']:.1f} tok/s")
        peaks = [cell(c, dtype, lambda r: f"{r['peak_gib']:.1f} GiB") for c in CELLS]
        lines.append(
            f"| {dtype} | {forward} | {backward} | {peaks[0]} | {generation} | {peaks[1]} |"
        )
    if any(r["dtype"] == FLOAT32_COMPUTE for r in rows):
        forward = cell("gradient", FLOAT32_COMPUTE, lambda r: f"{r['forward_seconds']:.1f} s")
        backward = cell(
            "gradient", FLOAT32_COMPUTE, lambda r: f"{r['forward_backward_seconds']:.1f} s"
        )
        peak = cell("gradient", FLOAT32_COMPUTE, lambda r: f"{r['peak_gib']:.1f} GiB")
        lines.append(
            f"| bfloat16 weights, float32 arithmetic | {forward} | {backward} | {peak} | | |"
        )
    for dtype in PAIR_DTYPES:
        row = next((r for r in rows if (r["cell"], r["dtype"]) == ("pair", dtype)), None)
        if row is None:
            continue
        lines += [
            "",
            f"Both engines in {dtype} in one process (KV cache: {row['kv_cache_gib']} GiB): "
            + cell(
                "pair",
                dtype,
                lambda r: (
                    f"vLLM {r['tokens_per_second']:.1f} tok/s, "
                    f"{r['available_gib_before_gradient_model']:.1f} GiB free for the gradient "
                    f"model, forward + backward {r['forward_backward_seconds']:.1f} s, "
                    f"peak {r['peak_gib']:.1f} GiB"
                ),
            ),
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-1.5b", help="an embedded model's name")
    parser.add_argument("--tokens", type=int, default=50, help="gradient pass length")
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument(
        "--cells", default="gradient,generation,pair", help="which cells to run (comma-separated)"
    )
    parser.add_argument("--limit", type=int, default=420, help="seconds per cell")
    parser.add_argument("--out", default=None, help="JSON rows, kept as each cell finishes")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        cell, dtype = args.child.split(":")
        cells = {"gradient": gradient_cell, "generation": generation_cell, "pair": pair_cell}
        report(cells[cell](args, dtype))
        return
    import torch

    from dspy_greater.adapters.hardware import fast_bfloat16

    out = Path(args.out) if args.out else None
    rows: list[dict[str, Any]] = json.loads(out.read_text())["rows"] if out and out.exists() else []
    cells = [("gradient", dtype) for dtype in (*DTYPES, FLOAT32_COMPUTE)]
    cells += [("generation", dtype) for dtype in DTYPES]
    cells += [("pair", dtype) for dtype in PAIR_DTYPES]
    machine = {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "fast_bfloat16": fast_bfloat16(),
    }
    for cell, dtype in cells:
        if cell not in args.cells.split(",") or any(
            (r["cell"], r["dtype"]) == (cell, dtype) for r in rows
        ):
            continue
        rows.append(one_cell(args, cell, dtype))
        if out:
            out.write_text(
                json.dumps({"args": vars(args), "machine": machine, "rows": rows}, indent=1)
            )
    print(
        f"{args.model} on this CPU ({torch.backends.cpu.get_cpu_capability()}); "
        f"fast_bfloat16() = {fast_bfloat16()}\n"
    )
    print(table(rows, args))


if __name__ == "__main__":  # vLLM starts worker processes with spawn: keep this guard
    main()
