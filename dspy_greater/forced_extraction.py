"""Forced extraction: DSPy's ChatAdapter with the field headers written by the adapter.

Small models do not write ``[[ ## answer ## ]]`` on their own, so ``ChatAdapter`` fails to parse
them. `ForcedExtractionAdapter` renders exactly what ChatAdapter renders, then fills the
output fields one at a time: it writes ``[[ ## reasoning ## ]]`` into the assistant message, lets
the model continue only that field's value, writes the next header, and so on (GReaTer's extractor
step, with the adapter's own header as extractor). `AdapterRenderer`
turns the same messages into token ids for the gradient pass: one rendering for generation and
gradients.
"""

from __future__ import annotations

import contextlib
import logging
import typing
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import dspy
from dspy.utils.exceptions import AdapterParseError

from .adapters.base import Conversation
from .errors import GreaterError
from .lm import local_reasoner
from .values import closed_choices, json_value, parse_field

logger = logging.getLogger(__name__)

STOP = "[[ ##"  # every field header starts with it: a value ends where the model starts one
Placement = Literal["system", "after_inputs"]
ClosedSets = Literal["auto", "map", "constrain"]
OnUnparsable = Literal["none", "raise"]


class CannotContinue(GreaterError):
    """The LM cannot continue a partly written assistant message."""


def header(name: str) -> str:
    return f"[[ ## {name} ## ]]"


# -- the adapter ------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Call:
    """One LM call the adapter needs: continue ``messages`` with these options."""

    messages: Conversation
    options: dict[str, Any]


class ForcedExtractionAdapter(dspy.ChatAdapter):
    """ChatAdapter for models that do not follow its format: the adapter writes every output
    field's header and the model completes only the values, one field per LM call. A value ends
    where the model starts a header (``[[ ##``); a single-line field's (every type but ``str``,
    and a last ``str`` output) at the line end.

    The LM must continue an assistant message: `dspy_greater.lm.local_lm`, or a vLLM
    server (``vllm serve``) behind ``dspy.LM``, which takes ``continue_final_message``.

    Args:
        instructions: Where the signature's instructions go. ``"system"`` renders exactly what
            ``ChatAdapter`` renders; ``"after_inputs"`` moves them to the end of the last user
            message (the GReaTer paper's placement).
        closed_sets: How a closed type (``bool``, ``Literal``, ``Enum``) is answered.
            ``"constrain"`` constrains decoding to its values with a JSON-schema
            ``response_format`` (written as JSON, ``"(A)"``); ``"map"`` maps the free completion
            to a value (``"True."`` -> ``True``); ``"auto"`` constrains unless the LM is a local
            engine that cannot (transformers). On BBH, constraining beat mapping by 40 points
            with SmolLM2 (docs/guides/small-models.md).
        on_unparsable: A value that cannot be read as its type is ``None`` (``"none"``: a wrong
            answer for the metric, not an error that stops ``dspy.Evaluate`` after
            ``max_errors``), or raises DSPy's ``AdapterParseError`` (``"raise"``).
        max_value_tokens: The token budget of a single-line field's value.
        callbacks: DSPy callbacks, as for ``dspy.ChatAdapter``.
    """

    def __init__(
        self,
        *,
        instructions: Placement = "system",
        closed_sets: ClosedSets = "auto",
        on_unparsable: OnUnparsable = "none",
        max_value_tokens: int = 32,
        callbacks: list[Any] | None = None,
    ) -> None:
        super().__init__(callbacks=callbacks, use_json_adapter_fallback=False)
        for name, value, allowed in (
            ("instructions", instructions, Placement),
            ("closed_sets", closed_sets, ClosedSets),
            ("on_unparsable", on_unparsable, OnUnparsable),
        ):
            if value not in typing.get_args(allowed):
                raise ValueError(
                    f"{name} must be one of {typing.get_args(allowed)}, got {value!r}."
                )
        self.instructions = instructions
        self.closed_sets = closed_sets
        self.on_unparsable = on_unparsable
        self.max_value_tokens = max_value_tokens
        self._checked_templates: set[int] = set()

    # -- rendering (ChatAdapter's, with the instructions optionally after the inputs) -----
    def format_system_message(self, signature: type[dspy.Signature]) -> str:
        if self.instructions == "system":
            return super().format_system_message(signature)
        return (
            f"{self.format_field_description(signature)}\n{self.format_field_structure(signature)}"
        )

    def format_user_message_content(
        self,
        signature: type[dspy.Signature],
        inputs: dict[str, Any],
        prefix: str = "",
        suffix: str = "",
        main_request: bool = False,
    ) -> str:
        content = super().format_user_message_content(
            signature, inputs, prefix, suffix, main_request
        )
        if main_request and self.instructions == "after_inputs" and signature.instructions:
            content = f"{content}\n\n{signature.instructions}"
        return content

    def assistant_prefix(
        self, signature: type[dspy.Signature], values: dict[str, str], field: str | None
    ) -> str:
        """The assistant message so far: the written ``values`` (in field order), then the
        header of ``field`` and the newline after it, where the model continues."""
        parts = [
            f"{header(name)}\n{values[name]}" for name in signature.output_fields if name in values
        ]
        if field is not None:
            parts.append(f"{header(field)}\n")
        return "\n\n".join(parts)

    def continuation(
        self,
        signature: type[dspy.Signature],
        demos: list[dict[str, Any]],
        inputs: dict[str, Any],
        values: dict[str, str],
        field: str | None,
    ) -> Conversation:
        """ChatAdapter's messages plus the partly written assistant message: what the LM
        continues to write ``field`` (and what the gradient pass renders)."""
        messages = self.format(signature, demos, inputs)
        return [
            *messages,
            {"role": "assistant", "content": self.assistant_prefix(signature, values, field)},
        ]

    # -- calling the LM ---------------------------------------------------------------------
    def constrains(self, lm: Any) -> bool:
        """Whether closed-set fields are constrained (not mapped) when calling ``lm``."""
        if self.closed_sets == "auto":
            return _can_constrain(lm)
        return self.closed_sets == "constrain"

    def check_lm(self, lm: Any) -> None:
        """Raise `GreaterError` if this adapter cannot drive ``lm``: a local engine asked
        to constrain decoding it cannot, or a chat template that drops the newline the adapter
        forces after a header (some templates strip a continued message's end)."""
        if self.closed_sets == "constrain" and not _can_constrain(lm):
            raise GreaterError(
                f"{type(local_reasoner(lm)).__name__} cannot constrain decoding to a "
                "closed set; use the vLLM backend (pip install dspy-greater[cpu] or [vllm]) or "
                "closed_sets='map'."
            )
        tokenizer = getattr(local_reasoner(lm), "tokenizer", None)
        if tokenizer is None or id(tokenizer) in self._checked_templates:
            return
        forced = f"{header('answer')}\n"
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": forced}],
            tokenize=False,
            add_generation_prompt=False,
            continue_final_message=True,
        )
        if not rendered.endswith(forced):
            raise GreaterError(
                f"The chat template of {lm.model} drops the end of a continued assistant message "
                f"(it renders {rendered[-40:]!r}, not ending in {forced!r}), so forced headers "
                "would lose their newline. Use a model whose template keeps it."
            )
        self._checked_templates.add(id(tokenizer))

    def single_line(self, signature: type[dspy.Signature], name: str) -> bool:
        """Whether ``name``'s value ends at the end of its first line."""
        annotation = signature.output_fields[name].annotation
        return annotation is not str or name == list(signature.output_fields)[-1]

    def _steps(
        self,
        lm: Any,
        lm_kwargs: dict[str, Any],
        signature: type[dspy.Signature],
        demos: list[dict[str, Any]],
        inputs: dict[str, Any],
        written: dict[str, str] | None = None,
    ) -> Generator[_Call, Any, list[dict[str, Any]]]:
        """The calls for one prediction, as a generator (shared by ``__call__`` and ``acall``):
        it yields each LM call and receives the LM's outputs. Fields in ``written`` (the first
        output fields, as text) are taken as given instead of generated."""
        signature = self._call_preprocess(lm, lm_kwargs, signature, inputs)
        if not signature.output_fields:
            raise ValueError(
                f"The signature {signature.signature!r} has no output fields; "
                "add one, e.g. 'question -> answer'."
            )
        self.check_lm(lm)
        budget = lm_kwargs.get("max_tokens") or lm.kwargs.get("max_tokens")
        values: dict[str, str] = {}
        parsed: dict[str, Any] = {}
        for name, info in signature.output_fields.items():
            if written and name in written:
                values[name] = written[name]
                parsed[name] = parse_field(written[name], info.annotation)
                continue
            single = self.single_line(signature, name)
            choices = closed_choices(info.annotation)
            constrain = choices is not None and self.constrains(lm)
            options = {
                **lm_kwargs,
                **_continue_options(lm),
                "stop": [STOP] + (["\n"] if single else []) + list(lm_kwargs.get("stop") or []),
            }
            if single and budget:
                options["max_tokens"] = min(budget, self.max_value_tokens)
            elif single:
                options["max_tokens"] = self.max_value_tokens
            if constrain and choices is not None:
                options["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {
                        "name": name,
                        "schema": {"enum": [json_value(c) for c in choices]},
                    },
                }
            outputs = yield _Call(
                self.continuation(signature, demos, inputs, values, name), options
            )
            text = _output_text(outputs[0])
            text = text.split(STOP, 1)[0]
            if single:
                text = text.strip().split("\n", 1)[0]
            values[name] = text.strip()
            try:
                parsed[name] = parse_field(values[name], info.annotation, constrained=constrain)
            except (ValueError, TypeError) as exc:
                if self.on_unparsable == "raise":
                    raise AdapterParseError(
                        adapter_name=type(self).__name__,
                        signature=signature,
                        lm_response=self.assistant_prefix(signature, values, None),
                        parsed_result=parsed,
                        message=f"The value of {name!r}, {values[name]!r}, is not a "
                        f"{_type_name(info.annotation)}: {exc}",
                    ) from exc
                logger.debug("Unparsable %s=%r: %s", name, values[name], exc)
                parsed[name] = None
        return [parsed]

    def __call__(
        self,
        lm: Any,
        lm_kwargs: dict[str, Any],
        signature: type[dspy.Signature],
        demos: list[dict[str, Any]],
        inputs: dict[str, Any],
    ) -> list[dict[str, Any]]:
        return [
            values
            for options in _samples(lm, lm_kwargs)
            for values in _drive(self._steps(lm, options, signature, demos, inputs), lm)
        ]

    def complete(
        self,
        lm: Any,
        signature: type[dspy.Signature],
        demos: list[dict[str, Any]],
        inputs: dict[str, Any],
        written: dict[str, str],
        lm_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The prediction whose first output fields are ``written`` (e.g. a reasoning chain
        generated elsewhere): the adapter generates and parses only the remaining fields."""
        [values] = _drive(
            self._steps(lm, dict(lm_kwargs or {}), signature, demos, inputs, written), lm
        )
        return values

    async def acall(
        self,
        lm: Any,
        lm_kwargs: dict[str, Any],
        signature: type[dspy.Signature],
        demos: list[dict[str, Any]],
        inputs: dict[str, Any],
    ) -> list[dict[str, Any]]:
        return [
            values
            for options in _samples(lm, lm_kwargs)
            for values in await _adrive(self._steps(lm, options, signature, demos, inputs), lm)
        ]


def _samples(lm: Any, lm_kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    """The options of each of the ``n`` completions asked for (COPRO asks for several): forced
    extraction writes one completion per pass, so ``n`` passes, each with ``n=1`` and its own
    ``rollout_id`` (DSPy's cache would otherwise return the first sample ``n`` times)."""
    n = lm_kwargs.get("n") or lm.kwargs.get("n") or 1
    if n == 1:
        return [dict(lm_kwargs)]
    base = lm_kwargs.get("rollout_id")
    passes = []
    for index in range(n):
        options = {**lm_kwargs, "n": 1}
        if index:
            options["rollout_id"] = (
                base + index
                if isinstance(base, int)
                else f"{base}-{index}"
                if base is not None
                else index
            )
        passes.append(options)
    return passes


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation)


def _output_text(output: Any) -> str:
    return (output.get("text") if isinstance(output, dict) else output) or ""


def _can_constrain(lm: Any) -> bool:
    """Servers take a JSON-schema ``response_format``; a local engine only on vLLM."""
    reasoner = local_reasoner(lm)
    return reasoner is None or getattr(reasoner, "supports_json_schema", False)


def _continue_options(lm: Any) -> dict[str, Any]:
    """How to ask ``lm`` to continue the last (assistant) message: local engines always do;
    vLLM's OpenAI-compatible server needs the two body keys (sent through LiteLLM)."""
    if local_reasoner(lm) is not None:
        return {}
    return {"continue_final_message": True, "add_generation_prompt": False}


def _cannot_continue(lm: Any, exc: Exception) -> Exception:
    if any(key in str(exc) for key in ("continue_final_message", "add_generation_prompt")):
        return CannotContinue(
            f"{getattr(lm, 'model', lm)!r} cannot continue an assistant message ({exc}). "
            "ForcedExtractionAdapter needs an LM that can: dspy_greater.lm.local_lm(), "
            "or dspy.LM('hosted_vllm/NAME', api_base=...) on `vllm serve`."
        )
    return exc


def _adapter_call(lm: Any, messages: Conversation) -> Any:
    """DSPy's marker for an adapter's own ``lm(messages=...)`` call (no deprecation warning)."""
    try:
        from dspy.clients._deprecation import adapter_message_call
    except ImportError:  # a DSPy without the 3.4 migration marker
        return contextlib.nullcontext()
    return adapter_message_call(lm, messages)


@contextlib.contextmanager
def _calling(lm: Any, call: _Call) -> Iterator[None]:
    """Around one LM call: DSPy's adapter-call marker, and a refused continuation named."""
    with _adapter_call(lm, call.messages):
        try:
            yield
        except Exception as exc:
            error = _cannot_continue(lm, exc)
            if error is exc:
                raise
            raise error from exc


def _drive(steps: Generator[_Call, Any, Any], lm: Any) -> Any:
    """Run the calls of `ForcedExtractionAdapter._steps` on ``lm``."""
    try:
        call = next(steps)
        while True:
            with _calling(lm, call):
                outputs = lm(messages=call.messages, **call.options)
            call = steps.send(outputs)
    except StopIteration as done:
        return done.value


async def _adrive(steps: Generator[_Call, Any, Any], lm: Any) -> Any:
    """`_drive` through ``lm.acall`` (``dspy.Predict.acall`` under this adapter)."""
    try:
        call = next(steps)
        while True:
            with _calling(lm, call):
                outputs = await lm.acall(messages=call.messages, **call.options)
            call = steps.send(outputs)
    except StopIteration as done:
        return done.value
