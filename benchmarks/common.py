"""What the benchmarks share: BBH tasks from the shared data, one timed search step, and one
measurement per fresh process (a benchmark runs itself with ``--child`` arguments, the child
prints ``RESULT <json>``, the parent reads that line: engines may log to stdout too)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SHARED_BBH = Path(__file__).resolve().parents[2] / "shared" / "data" / "bbh"

MARK = "RESULT "


def report(row: Any) -> None:
    """In the child: the measurement, on the marked line."""
    print(MARK + json.dumps(row))


def run_child(script: str, *args: str) -> Any:
    """In the parent: run ``script`` with ``args`` in a new Python and return what it reported
    (its logs and progress pass through on stderr)."""
    out = subprocess.run(
        [sys.executable, script, *args], check=True, stdout=subprocess.PIPE, text=True
    ).stdout
    return json.loads(next(line[len(MARK) :] for line in out.splitlines() if line.startswith(MARK)))


def git_commit() -> str | None:
    """The checked-out commit (with "+" when the tree has changes), if this is a git checkout."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+" if dirty else "")


def evaluate_test(
    folder: Path,
    make_program: Callable[[], Any],
    data: str,
    *,
    model: str,
    test: int,
    threads: int,
    max_tokens: int = 128,
    dtype: str | None = None,
) -> dict[str, Any]:
    """``dspy-greater evaluate``'s result for the program ``make_program`` builds, on the first
    ``test`` test questions of ``data`` with ``optimizers_bbh.py``'s splits (12 train, 50 dev).
    The program and the result go into ``folder``; a result already there is read back without
    building the program, so that a stopped benchmark continues where it was."""
    from dspy_greater import cli

    out = folder / "evaluate-test.json"
    if not out.exists():
        folder.mkdir(parents=True, exist_ok=True)
        make_program().save(str(folder / "program.json"))
        splits = ["--train", "12", "--dev", "50", "--test", str(test)]
        engine = ["--model", model, "--max-tokens", str(max_tokens)]
        engine += ["--dtype", dtype] if dtype else []
        code = cli.main(
            [
                *["evaluate", "--program", str(folder), "--data", data, *splits, *engine],
                *["--threads", str(threads), "--out", str(out)],
            ]
        )
        if code in (cli.EXIT_INTERRUPTED, cli.EXIT_TERMINATED):
            raise SystemExit(code)
        if code != 0:
            raise SystemExit(f"{folder}: evaluate exited {code}")
    return json.loads(out.read_text())


def cell_task(cell: Path) -> tuple[dict[str, Any], Any, Any, Any]:
    """An ``optimizers_bbh.py`` cell's settings (its ``cli.json``), its task on the cell's splits,
    and its task LM with the forced-extraction adapter, both configured in DSPy: the cell's own
    scoring, so its answers come from DSPy's cache."""
    import dspy

    from dspy_greater import ForcedExtractionAdapter, load_task, local_lm

    settings = json.loads((cell / "cli.json").read_text())
    task = load_task(
        settings["data"],
        train=settings["train"],
        dev=settings["dev"],
        test=settings["test"],
        seed=settings["seed"],
    )
    lm = local_lm(settings["model"], dtype=settings["dtype"], max_tokens=settings["max_tokens"])
    adapter = ForcedExtractionAdapter()
    dspy.configure(lm=lm, adapter=adapter)
    return settings, task, lm, adapter


def load_bbh(task: str) -> list[Any]:
    """A BBH task from the shared benchmark data, else the copy shipped in the package."""
    import dspy_greater

    path = SHARED_BBH / f"{task}.json"
    return dspy_greater.load_bbh(path if path.exists() else task)


def timed_step(data: list[Any], reasoner: Any, model: Any, tokens: int) -> tuple[Any, float]:
    """One GReaTer step from the paper's prompt on the chat-template renderer (the light budget,
    ``len(data)`` examples, ``tokens`` reasoning tokens): the search's result and its seconds."""
    from dspy_greater import PAPER_PROMPT, GreaterConfig, run_greater
    from dspy_greater.chat_template import ChatTemplateRenderer

    config = GreaterConfig.budget(
        "light", steps=1, num_examples=len(data), max_reasoning_tokens=tokens
    )
    started = time.perf_counter()
    result = run_greater(
        data,
        initial_prompt=PAPER_PROMPT,
        config=config,
        renderer=ChatTemplateRenderer(model.tokenizer),
        reasoner=reasoner,
        gradient_model=model,
        progress=False,
    )
    return result, time.perf_counter() - started


class PeakMemory:
    """Peak resident memory of this process and its children (vLLM's engine is a child), sampled
    every 50 ms in a thread."""

    def __init__(self) -> None:
        import threading

        import psutil

        self._me, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        import psutil

        while not self._stop.wait(0.05):
            total = 0
            for proc in [self._me, *self._me.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / 2**30


def without_variants(argv: list[str]) -> list[str]:
    """The command line without ``--variants VALUE`` (the child gets ``--child`` instead)."""
    kept, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--variants":
            skip = True
        elif not a.startswith("--variants="):
            kept.append(a)
    return kept
