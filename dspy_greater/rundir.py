"""A GReaTer run on disk: its configuration, a checkpoint after every step, every generation.

``run.json`` (versioned by ``SCHEMA``) holds the configuration and the latest
`SearchState`; it is replaced atomically, so a killed run loses at
most the step in progress. ``generations.jsonl`` is append-only: every reasoning chain, keyed by
(prompt ids, example index). vLLM on CPU is not batch-invariant, so a resumed run replays these
instead of generating them again, and ends where an uninterrupted run would.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator, MutableMapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .errors import GreaterError
from .search import Prompt, PromptScore, SearchState, StepRecord

logger = logging.getLogger(__name__)

SCHEMA = 2  # 2: a stages/ folder per predictor and round
_Key = tuple[Prompt, int]


class RunDirMismatch(GreaterError):
    """A run directory was made by another configuration or schema than the one resuming it."""


def write_json_atomically(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file and a rename."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(data, stream, indent=1)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# -- JSON forms of the search's types ------------------------------------------------------------
def state_to_json(state: SearchState) -> dict[str, Any]:
    version, internal, gauss = state.rng_state
    return {
        "steps_done": state.steps_done,
        "prompt": list(state.prompt),
        "position": state.position,
        "rng_state": [version, list(internal), gauss],
        "history": [asdict(record) for record in state.history],
        "scores": [[list(prompt), asdict(score)] for prompt, score in state.scores.items()],
        "initial": list(state.initial),
        "setup_seconds": state.setup_seconds,
    }


def state_from_json(data: dict[str, Any]) -> SearchState:
    version, internal, gauss = data["rng_state"]
    history = []
    for record in data["history"]:
        record = dict(record)
        record["scores"] = {int(token): value for token, value in record["scores"].items()}
        history.append(StepRecord(**record))
    return SearchState(
        steps_done=data["steps_done"],
        prompt=tuple(data["prompt"]),
        position=data["position"],
        rng_state=(version, tuple(internal), gauss),
        history=history,
        scores={tuple(prompt): PromptScore(**score) for prompt, score in data["scores"]},
        initial=tuple(data["initial"]),
        setup_seconds=data.get("setup_seconds", {}),
    )


class GenerationStore(MutableMapping[_Key, tuple[int, ...]]):
    """Reasoning chains by (prompt ids, example index), written through to a JSONL file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._chains: dict[_Key, tuple[int, ...]] = {}
        if path.exists():
            with path.open() as stream:
                for number, line in enumerate(stream, 1):
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:  # the line a killed run was writing
                        logger.warning("Skipping the unfinished line %d of %s.", number, path)
                        continue
                    self._chains[(tuple(row["prompt"]), row["example"])] = tuple(row["reasoning"])
        self._stream = path.open("a")

    def __getitem__(self, key: _Key) -> tuple[int, ...]:
        return self._chains[key]

    def __setitem__(self, key: _Key, value: tuple[int, ...]) -> None:
        prompt, example = key
        self._stream.write(
            json.dumps({"prompt": list(prompt), "example": example, "reasoning": list(value)})
            + "\n"
        )
        self._stream.flush()
        self._chains[key] = tuple(value)

    def __delitem__(self, key: _Key) -> None:
        raise TypeError("Generations are never forgotten; start a new run directory instead.")

    def __iter__(self) -> Iterator[_Key]:
        return iter(self._chains)

    def __len__(self) -> int:
        return len(self._chains)

    def close(self) -> None:
        self._stream.close()


class RunDir:
    """One run's folder. ``config`` (JSON-serialisable) identifies the run: resuming with another
    configuration or schema is refused, naming what differs."""

    def __init__(
        self, path: str | os.PathLike[str], config: dict[str, Any], *, resume: bool
    ) -> None:
        self.path = Path(path)
        self.config = json.loads(json.dumps(config))  # as it reads back from disk
        self.run_file = self.path / "run.json"
        if self.run_file.exists():
            if not resume:
                raise GreaterError(
                    f"{self.path} already holds a run. Pass resume=True to continue it, or choose "
                    "another run directory."
                )
            self._check(json.loads(self.run_file.read_text()))
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            write_json_atomically(
                self.run_file,
                {"schema": SCHEMA, "config": self.config, "state": None, "result": None},
            )
        self._generations: GenerationStore | None = None

    @property
    def generations(self) -> GenerationStore:
        """The run's reasoning chains (the file is opened on first use)."""
        if self._generations is None:
            self._generations = GenerationStore(self.path / "generations.jsonl")
        return self._generations

    def _check(self, stored: dict[str, Any]) -> None:
        if stored.get("schema") != SCHEMA:
            raise RunDirMismatch(
                f"{self.run_file} has schema {stored.get('schema')!r}; this dspy-greater "
                f"writes schema {SCHEMA}. Start a new run directory."
            )
        differences = changed_settings(stored.get("config", {}), self.config)
        if differences:
            raise RunDirMismatch(
                f"{self.path} was made with other settings; cannot resume it with these "
                f"({'; '.join(differences)}). Use the same settings or a new run directory."
            )

    def _read(self) -> dict[str, Any]:
        return json.loads(self.run_file.read_text())

    def state(self) -> SearchState | None:
        """The last checkpoint, or None for a run that has not finished its setup."""
        stored = self._read()["state"]
        return None if stored is None else state_from_json(stored)

    def save_state(self, state: SearchState) -> None:
        data = self._read()
        data["state"] = state_to_json(state)
        write_json_atomically(self.run_file, data)

    def save_result(self, result: dict[str, Any]) -> None:
        data = self._read()
        data["result"] = result
        write_json_atomically(self.run_file, data)

    def close(self) -> None:
        if self._generations is not None:
            self._generations.close()


def changed_settings(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Each setting that differs, by its dotted name: ``"search.steps: 1 -> 2"``."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            change
            for key in sorted(set(old) | set(new))
            for change in changed_settings(old.get(key), new.get(key), f"{prefix}{key}.")
        ]
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]
