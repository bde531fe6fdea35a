"""A run folder's settings: stored when a run starts, compared when it resumes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..rundir import write_json_atomically
from .common import CliError, writable_folder

SETTINGS = "cli.json"  # what `optimize` was asked to do: a resumed run must ask the same
START = "start.json"  # the starting program with --demos: a resumed run starts from the same
# Settings added since the first release, as runs that did not store them had them.
SETTINGS_BEFORE_THEY_WERE_KEPT: dict[str, Any] = {
    "dtype": "float32",
    "search": {},
    "placement": "system",  # the only placement before --placement (not DEFAULT_PLACEMENT)
    "demos": 0,
}


def prepare_run_dir(folder: Path, settings: dict[str, Any], resume: bool) -> None:
    if folder.exists() and not folder.is_dir():
        raise CliError(
            f"--run-dir {folder} is a file, not a folder; choose a folder (new or "
            "empty, or a run's folder with --resume)."
        )
    stored = folder / SETTINGS
    if folder.exists() and any(folder.iterdir()):
        if not resume:
            raise CliError(
                f"{folder} already holds a run. Pass --resume to continue it, or "
                "choose another --run-dir."
            )
        if not stored.exists():
            raise CliError(
                f"{folder} is not a dspy-greater run folder (no {SETTINGS}); choose "
                "another --run-dir."
            )
        before = {**SETTINGS_BEFORE_THEY_WERE_KEPT, **json.loads(stored.read_text())}
        changed = [
            f"{key}: {before.get(key)!r} -> {settings.get(key)!r}"
            for key in sorted(set(before) | set(settings))
            if before.get(key) != settings.get(key)
        ]
        if changed:
            raise CliError(
                f"{folder} holds a run with other settings ({'; '.join(changed)}). "
                "Resume with the same options, or choose another --run-dir."
            )
    writable_folder(folder)
    write_json_atomically(stored, settings)
