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


def check_model(model: str | None) -> str | None:
    """``--model``, checked to be an embedded model's name or a folder."""
    if model is not None and model not in EMBEDDED_MODELS and not Path(model).is_dir():
        raise CliError(
            f"--model {model}: no such folder. Give a Hugging Face model folder "
            "(config.json, weights, tokenizer), the name of an embedded model "
            f"({', '.join(EMBEDDED_MODELS)}), or leave it out for {DEFAULT_MODEL}."
        )
    return model


def configured_lm(settings: dict[str, Any]) -> tuple[Any, Any]:
    """The task LM on the local model, with the forced-extraction adapter configured, and its
    reasoner (it counts every generation: DSPy's calls and GReaTer's search)."""
    import dspy

    from ..adapters.hf_loading import resolve_device
    from ..forced_extraction import ForcedExtractionAdapter
    from ..lm import local_lm, local_reasoner

    resolve_device(settings["device"])
    model = check_model(settings["model"])
    lm = local_lm(
        model,
        backend=settings["backend"],
        dtype=settings["dtype"],
        max_tokens=settings["max_tokens"],
        max_model_len=settings.get("max_model_len"),
        cache=not settings["no_cache"],
    )
    dspy.configure(lm=lm, adapter=ForcedExtractionAdapter(instructions=settings["placement"]))
    return lm, local_reasoner(lm)


def check_before_engines(
    program: Any,
    metric: Any,
    splits: dict[str, list[Any]],
    settings: dict[str, Any],
    reasoning_tokens: dict[str, int],
) -> None:
    """The checks `GReaTer.compile` makes, made before any engine starts (a second, not the
    engine's minute): the labels against the answer field's type, the metric on a made-up
    prediction, and every example's length against the engine's context with the largest of
    ``reasoning_tokens`` (``{option: tokens}``)."""
    from transformers import AutoTokenizer

    from ..adapters import engine_context_length
    from ..checks import check_labels_and_metric, check_lengths
    from ..errors import GreaterError
    from ..forced_extraction import ForcedExtractionAdapter
    from ..models import resolve_model
    from ..renderers import reasoning_and_answer

    [(_, predictor)] = program.named_predictors()  # the CLI's programs are one ChainOfThought
    signature = predictor.signature
    _, answer = reasoning_and_answer(signature)
    named = {f"{which} split": split for which, split in splits.items()}
    try:
        check_labels_and_metric(metric, named, signature, answer)
        folder = resolve_model(check_model(settings["model"]))
        context, limit = engine_context_length(
            folder, backend=settings["backend"], max_model_len=settings.get("max_model_len")
        )
        check_lengths(
            predictor,
            AutoTokenizer.from_pretrained(folder),
            ForcedExtractionAdapter(instructions=settings["placement"]),
            signature.instructions,
            named,
            context_length=context,
            new_tokens=reasoning_tokens,
            limit_setting="--max-model-len" if limit == "max_model_len" else None,
        )
    except GreaterError as exc:
        raise CliError(str(exc)) from exc


def note_truncation(reasoner: Any, since: tuple[int, int]) -> None:
    note = truncation_note(reasoner, since)
    if note:
        logger.info(note)
