"""One GReaTer step with HF `generate`, the offline vLLM engine (eager, compiled) and a vLLM server.

8 examples, 128 reasoning tokens, shortlist of 3, same gradient model (fp32) for all. Each
reasoner runs in its own process. Prints a Markdown table: time per phase, the whole step, the
generation throughput and vLLM's prefix-cache hit rate.

    python benchmarks/reasoners.py [--examples 8] [--tokens 128] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import time

from common import report, run_child, timed_step


def one_step(backend: str, examples: int, tokens: int, dtype: str) -> dict:
    if backend == "server":
        import dspy_greater
        from dspy_greater.adapters.vllm_server import launch_vllm_server

        with launch_vllm_server(
            dspy_greater.default_model(), served_name="smollm2", dtype=dtype
        ) as base:
            return _one_step(backend, examples, tokens, dtype, base)
    return _one_step(backend, examples, tokens, dtype, None)


def _one_step(backend: str, examples: int, tokens: int, dtype: str, server: str | None) -> dict:
    import dspy

    import dspy_greater
    from dspy_greater.adapters import make_reasoner
    from dspy_greater.adapters.hf_gradient import HFGradientModel

    path = dspy_greater.default_model()
    data = dspy_greater.split(
        dspy_greater.load_bbh("sports_understanding"), train=examples, dev=0
    ).train
    started = time.perf_counter()
    if server is not None:
        from dspy_greater.server_reasoner import ServerReasoner

        lm = dspy.LM("hosted_vllm/smollm2", api_base=server, api_key="none", cache=False)
        reasoner = ServerReasoner(lm, tokenizer=path)
    elif backend == "vllm-compiled":
        reasoner = make_reasoner(
            path, backend="vllm", dtype=dtype, enforce_eager=False, log_stats=True
        )
    else:
        kwargs = {"batch_size": examples} if backend == "hf" else {"log_stats": True}
        reasoner = make_reasoner(path, backend=backend, dtype=dtype, **kwargs)
    start_seconds = time.perf_counter() - started
    model = HFGradientModel(path)
    generated = 0
    chat = reasoner.chat

    def counting(conversations, **kw):  # count the tokens the step generates
        nonlocal generated
        outs = chat(conversations, **kw)
        generated += sum(len(o.token_ids) for o in outs)
        return outs

    reasoner.chat = counting
    result, total = timed_step(data, reasoner, model, tokens)
    [step] = result.history
    generation = result.setup_seconds["reason"] + step.seconds["select_generation"]
    hit_rate = getattr(reasoner, "prefix_cache_hit_rate", lambda: None)()
    return {
        "backend": backend,
        "engine_start": start_seconds,
        "reason": result.setup_seconds["reason"],
        "propose": step.seconds["propose"],
        "gradient": step.seconds["gradient"],
        "select": step.seconds["select"],
        "generation": generation,
        "total": total,
        "tokens": generated,
        "tokens_per_s": generated / generation,
        "prefix_hit_rate": hit_rate,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--backends", default="hf,vllm,vllm-compiled,server")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        report(one_step(args.child, args.examples, args.tokens, args.dtype))
        return
    rows = []
    for backend in args.backends.split(","):
        rows.append(
            run_child(
                __file__,
                "--child",
                backend,
                "--examples",
                str(args.examples),
                "--tokens",
                str(args.tokens),
                "--dtype",
                args.dtype,
            )
        )
    print(
        f"One GReaTer step, {args.examples} examples, {args.tokens} reasoning tokens, shortlist 3, "
        f"reasoner in {args.dtype}, gradient model fp32, SmolLM2-135M, CPU\n"
    )
    print(
        "| reasoner | engine start | reason | propose | gradient | select (of which generation) "
        "| step | generated | tokens/s | prefix-cache hits |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        hits = "—" if r["prefix_hit_rate"] is None else f"{r['prefix_hit_rate']:.0%}"
        print(
            f"| {r['backend']} | {r['engine_start']:.0f} s | {r['reason']:.1f} s | "
            f"{r['propose']:.1f} s | {r['gradient']:.1f} s | {r['select']:.1f} s "
            f"({r['generation'] - r['reason']:.1f} s) | "
            f"{r['total']:.1f} s | {r['tokens']} | {r['tokens_per_s']:.0f} | {hits} |"
        )
    gen = lambda r: r["generation"]  # noqa: E731
    base = rows[0]
    for r in rows[1:]:
        print(
            f"\n{r['backend']} vs {base['backend']}: generation phases "
            f"{gen(base) / gen(r):.1f}x faster, whole step {base['total'] / r['total']:.1f}x"
        )


if __name__ == "__main__":
    main()
