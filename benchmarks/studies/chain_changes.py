"""How much does one of GReaTer's single-token edits change the model's reasoning? For a GReaTer
cell of ``optimizers_bbh.py``, every prompt its selection scored (in the order the search tried
them; the first is the start) is compared with the start on the same selection examples: how
many of its greedy reasoning chains are the start's, token for token, and how much of each chain
they share from its first token. Read from the run's ``generations.jsonl``; no model runs (its
tokenizer only decodes the prompts).

    python benchmarks/studies/chain_changes.py --cell benchmarks/runs/optimizers-MODEL/TASK/greater
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import mean


def shared_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", type=Path, required=True, help="a GReaTer cell's run folder")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from dspy_greater.models import resolve_model

    settings = json.loads((args.cell / "cli.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(settings["model"]))
    [generations] = sorted((args.cell / "greater" / "stages").glob("*/generations.jsonl"))
    chains: dict[tuple[int, ...], dict[int, list[int]]] = {}  # prompt -> example -> reasoning
    for line in generations.read_text().splitlines():
        row = json.loads(line)
        chains.setdefault(tuple(row["prompt"]), {})[row["example"]] = row["reasoning"]
    start_prompt, *edited = chains
    start = chains[start_prompt]
    print("| prompt | chains equal to the start's | shared prefix (mean) |")
    print("| --- | --- | --- |")
    equal_in_all = total = 0
    for prompt in edited:
        examples = [e for e in chains[prompt] if e in start]
        equal = sum(chains[prompt][e] == start[e] for e in examples)
        prefix = mean(
            shared_prefix(chains[prompt][e], start[e]) / max(len(start[e]), 1) for e in examples
        )
        equal_in_all, total = equal_in_all + equal, total + len(examples)
        text = tokenizer.decode(list(prompt)).strip()
        print(f"| `{text}` | {equal} / {len(examples)} | {prefix:.2f} |")
    print(
        f"\n{len(edited)} edited prompts: {equal_in_all} of {total} chains "
        f"({equal_in_all / max(total, 1):.0%}) are the start's, token for token."
    )


if __name__ == "__main__":
    main()
