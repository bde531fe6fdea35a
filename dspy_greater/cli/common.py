"""What both commands share: the task, the LM on the local model, and errors a user can fix."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..logs import truncation_note
from ..models import DEFAULT_MODEL, EMBEDDED_MODELS

DEFAULT_PLACEMENT = "system"  # DSPy's own: the instructions in the system message

logger = logging.getLogger(__name__)


class CliError(Exception):
    """A problem the user can fix; printed without a traceback."""


def writable_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise CliError(
            f"Cannot write to {folder} ({exc.strerror or exc}); choose a writable folder."
        ) from exc


def load_task_or_fail(settings: dict[str, Any]) -> Any:
    from ..loaders import load_task

    try:
        return load_task(
            settings["data"],
            train=settings["train"],
            dev=settings["dev"],
            test=settings["test"],
            seed=settings["seed"],
        )
    except (FileNotFoundError, ValueError) as exc:
        raise CliError(str(exc)) from exc


def configured_lm(settings: dict[str, Any]) -> tuple[Any, Any]:
    """The task LM on the local model, with the forced-extraction adapter configured, and its
    reasoner (it counts every generation: DSPy's calls and GReaTer's search)."""
    import dspy

    from ..adapters.hf_loading import resolve_device
    from ..forced_extraction import ForcedExtractionAdapter
    from ..lm import local_lm, local_reasoner

    resolve_device(settings["device"])
    model = settings["model"]
    if model is not None and model not in EMBEDDED_MODELS and not Path(model).is_dir():
        raise CliError(
            f"--model {model}: no such folder. Give a Hugging Face model folder "
            "(config.json, weights, tokenizer), the name of an embedded model "
            f"({', '.join(EMBEDDED_MODELS)}), or leave it out for {DEFAULT_MODEL}."
        )
    lm = local_lm(
        model,
        backend=settings["backend"],
        dtype=settings["dtype"],
        max_tokens=settings["max_tokens"],
        cache=not settings["no_cache"],
    )
    dspy.configure(lm=lm, adapter=ForcedExtractionAdapter(instructions=settings["placement"]))
    return lm, local_reasoner(lm)


def note_truncation(reasoner: Any, since: tuple[int, int]) -> None:
    note = truncation_note(reasoner, since)
    if note:
        logger.info(note)
