"""The user's mistakes, caught before anything expensive: a metric DSPy cannot call or read, a
label the model's answer can never equal, an example too long for the model's context. Each
check names what is wrong, where (the example), and the setting or fix."""

from __future__ import annotations

import inspect
import logging
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import dspy

from .errors import ContextTooLong, GreaterError
from .forced_extraction import ForcedExtractionAdapter
from .program import metric_value
from .renderers import AdapterRenderer

logger = logging.getLogger(__name__)


def check_metric(
    metric: Callable[..., Any], example: dspy.Example, outputs: dict[str, Any]
) -> None:
    """Call ``metric`` once, before anything expensive, on ``example`` and a prediction made of
    its own labels (``outputs``: the output fields and their values), as GReaTer will call it:
    ``metric(example, prediction, trace)``. A metric that cannot be called so, or that returns
    None or something that is not a score, stops the run with what to change."""
    try:
        inspect.signature(metric).bind(example, None, None)
    except TypeError:
        raise GreaterError(
            f"The metric {getattr(metric, '__name__', metric)!r} cannot be called as "
            f"metric(example, prediction, trace) (its signature is "
            f"{inspect.signature(metric)}). Define it as "
            "def metric(example, prediction, trace=None) -> bool | float, as DSPy's optimizers "
            "expect."
        ) from None
    except ValueError:  # a callable without a signature (a builtin): call it and see
        pass
    prediction = dspy.Prediction(**outputs)
    try:
        result = metric(example, prediction, None)
    except Exception as exc:  # it may need what only a real prediction has; the search will say
        logger.warning(
            "The metric raised on a prediction made of example 0's own labels (%r); if it "
            "raises on every prediction, the run stops at its first evaluation.",
            exc,
        )
        return
    if result is None:
        raise GreaterError(
            "The metric returned None for example 0 (given its own labels as the prediction). "
            "Return a bool, a number, or a dspy.Prediction with a score."
        )
    try:
        value = metric_value(result)
    except (TypeError, ValueError) as exc:
        raise GreaterError(
            f"The metric returned {result!r} ({type(result).__name__}) for example 0, which is not "
            f"a score ({exc}). Return a bool, a number, or a dspy.Prediction with a score."
        ) from exc
    if not value:
        logger.warning(
            "The metric scores example 0's own labels as wrong (%r): check that it compares "
            "the prediction's fields with the example's.",
            result,
        )


def check_labels(examples: Sequence[dspy.Example], which: str, field: str, annotation: Any) -> None:
    """Each example's label for the output ``field`` is of the field's type (one of a closed
    set's choices): a label the adapter's output can never equal is refused before the search,
    naming the example, the field and the fix."""
    choices = typing.get_args(annotation) if typing.get_origin(annotation) is Literal else None
    for i, example in enumerate(examples):
        value = example[field]
        if choices is not None:
            if value not in choices:
                raise GreaterError(
                    f"Example {i} of the {which} has {field}={value!r}, not one of the field's "
                    f"choices {list(choices)}. Fix the label, or widen the field's type."
                )
        elif isinstance(annotation, type) and not _is_instance(value, annotation):
            raise GreaterError(
                f"Example {i} of the {which} has {field}={value!r} ({type(value).__name__}), "
                f"but the output field {field!r} is {annotation.__name__}: the model's answers "
                f"are read as {annotation.__name__} and would never equal it. Convert the "
                f"labels ({annotation.__name__}(...)) or type the field as "
                f"{type(value).__name__}."
            )


def made_up_outputs(example: dspy.Example, signature: Any | None) -> dict[str, Any]:
    """A prediction's fields made of ``example``'s own labels: every output field of
    ``signature`` (a placeholder of its type where the example has no such label), or, for a
    pipeline (None), the example's labels."""
    if signature is None:
        return dict(example.labels())
    return {
        name: example[name] if name in example else _placeholder(info.annotation)
        for name, info in signature.output_fields.items()
    }


def _placeholder(annotation: Any) -> Any:
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)[0]
    return annotation() if annotation in (str, int, float, bool) else "..."


def _is_instance(value: Any, annotation: type) -> bool:
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def check_labels_and_metric(
    metric: Callable[..., Any],
    splits: Mapping[str, Sequence[dspy.Example]],
    signature: Any | None,
    label: str | None,
) -> None:
    """The checks made before any engine starts: each split's labels against the ``label``
    field's type (a single predictor's; None for a pipeline, whose examples are checked as the
    program runs), then the metric on a prediction made of the first example's own labels."""
    if label is not None and signature is not None:
        annotation = signature.output_fields[label].annotation
        for which, examples in splits.items():
            check_labels(examples, which, label, annotation)
    first = next(iter(splits.values()))[0]
    check_metric(metric, first, made_up_outputs(first, signature))


def check_lengths(
    predictor: Any,
    tokenizer: Any,
    adapter: ForcedExtractionAdapter,
    prompt: str,
    splits: Mapping[str, Sequence[dspy.Example]],
    *,
    context_length: int | None,
    new_tokens: Mapping[str, int],
    limit_setting: str | None,
    constrained: bool = True,
) -> None:
    """Each example, rendered with ``prompt`` as ``adapter`` sends it to ``predictor``'s model
    (its demos and the answer included), fits ``context_length`` with the largest budget of
    ``new_tokens`` (``{setting: tokens}``, e.g. the search's ``max_reasoning_tokens``); a
    `ContextTooLong` that names the example, its tokens, the limit and ``limit_setting`` (what
    raises the limit; None where it is the model's own) otherwise. Nothing to check where the
    context is unknown (a server's)."""
    if context_length is None:
        return
    renderer = AdapterRenderer(
        predictor.signature,
        tokenizer,
        adapter,
        demos=list(predictor.demos),
        constrained=constrained,
    )
    prompt = " ".join(prompt.split())
    setting, budget = max(new_tokens.items(), key=lambda item: item[1])
    for which, examples in splits.items():
        for i, example in enumerate(examples):
            ids = renderer.render(renderer.encode_prompt(prompt, example), example).ids
            if len(ids) + budget > context_length:
                raise ContextTooLong(
                    f"Example {i} of the {which} is too long for the model's context: "
                    f"rendered, it has {len(ids):,} tokens, and with {budget:,} reasoning tokens "
                    f"({setting}) it needs {len(ids) + budget:,} of the {context_length:,} the "
                    f"context holds. Shorten or drop the example, or lower {setting}"
                    + (
                        f", or raise {limit_setting}."
                        if limit_setting
                        else " (the context is the model's own limit)."
                    )
                )
