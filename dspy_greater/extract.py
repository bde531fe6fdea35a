"""Forced extraction: DSPy's ChatAdapter with the field headers written by the adapter.

Small models do not write ``[[ ## answer ## ]]`` on their own, so ``ChatAdapter`` fails to parse
them. :class:`ForcedExtractionAdapter` renders exactly what ChatAdapter renders, then fills the
output fields one at a time: it writes ``[[ ## reasoning ## ]]`` into the assistant message, lets
the model continue only that field's value, writes the next header, and so on (GReaTer's extractor
step, with the adapter's own header as extractor). :class:`AdapterRenderer` turns the same
messages into token ids for the gradient pass: one rendering for generation and gradients.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import re
import typing
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import dspy
from dspy.adapters.utils import format_field_value, parse_value
from dspy.utils.exceptions import AdapterParseError

from .adapters.base import Conversation, RenderedExample
from .chat_template import token_span
from .errors import GreaterError, SlotError

logger = logging.getLogger(__name__)

STOP = "[[ ##"  # every field header starts with it: a value ends where the model starts one
Placement = Literal["system", "after_inputs"]
ClosedSets = Literal["auto", "map", "constrain"]
OnUnparsable = Literal["none", "raise"]
_WORD = re.compile(r"[\w()]+")


class CannotContinue(GreaterError):
    """The LM cannot continue a partly written assistant message."""


def header(name: str) -> str:
    return f"[[ ## {name} ## ]]"


# -- values -----------------------------------------------------------------------------------
def closed_choices(annotation: Any) -> list[Any] | None:
    """The values of a closed type (``bool``, ``Literal[...]``, an ``Enum``); None otherwise."""
    if annotation is bool:
        return [True, False]
    if typing.get_origin(annotation) is Literal:
        return list(typing.get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return list(annotation)
    return None


def _norm(text: str) -> str:
    return " ".join(_WORD.findall(text.casefold()))


def _spellings(choice: Any) -> list[str]:
    if isinstance(choice, bool):
        return ["true", "yes"] if choice else ["false", "no"]
    if isinstance(choice, enum.Enum):
        return [_norm(str(choice.value)), _norm(choice.name)]
    return [_norm(str(choice))]


def map_to_choice(text: str, choices: Sequence[Any]) -> Any:
    """The choice ``text`` names: equal after normalising case and punctuation, else the choice
    it starts with (longest first), else the only choice it mentions as a whole word.
    Raises ``ValueError`` when none or several match."""
    said = _norm(text)
    spelled = [(s, c) for c in choices for s in _spellings(c) if s]
    for spelling, choice in spelled:
        if said == spelling:
            return choice
    for spelling, choice in sorted(spelled, key=lambda sc: -len(sc[0])):
        if said.startswith(spelling + " "):
            return choice
    mentioned = {id(c): c for s, c in spelled if re.search(rf"(?<!\w){re.escape(s)}(?!\w)", said)}
    if len(mentioned) == 1:
        return next(iter(mentioned.values()))
    raise ValueError(
        f"{text!r} names none of {list(choices)!r}"
        if not mentioned
        else f"{text!r} names several of {list(choices)!r}"
    )


def parse_field(text: str, annotation: Any, *, constrained: bool = False) -> Any:
    """``text`` (one field's value, as the model wrote it) as a value of ``annotation``.

    Raises ``ValueError`` when it cannot be one.
    """
    if annotation is str:
        return text
    choices = closed_choices(annotation)
    if choices is not None:
        if constrained:  # JSON from the schema constraint: an exact value
            value = json.loads(text)
            for choice in choices:
                if value == (choice.value if isinstance(choice, enum.Enum) else choice):
                    return choice
        return map_to_choice(text, choices)
    try:
        return parse_value(text, annotation)
    except (ValueError, TypeError) as exc:
        if annotation in (int, float):
            number = re.search(r"-?\d+(?:\.\d+)?", text.replace(",", ""))
            if number:
                value = float(number.group())
                if annotation is float:
                    return value
                if value.is_integer():  # "3" or "3.0"; "3.7" is no int, and is not cut to 3
                    return int(value)
                raise ValueError(f"{text!r} is not an integer") from exc
        raise ValueError(str(exc)) from exc


def _json_value(choice: Any) -> Any:
    return choice.value if isinstance(choice, enum.Enum) else choice


# -- the adapter ------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Call:
    """One LM call the adapter needs: continue ``messages`` with these options."""

    messages: Conversation
    options: dict[str, Any]


class ForcedExtractionAdapter(dspy.ChatAdapter):
    """ChatAdapter for models that do not follow its format: the adapter writes every output
    field's header and the model completes only the values, one field per LM call.

    - ``instructions="system"`` renders exactly what ``ChatAdapter`` renders;
      ``"after_inputs"`` moves the signature's instructions from the system message to the end
      of the last user message (the GReaTer paper's placement). Either way the text is the
      predictor's ``signature.instructions``.
    - A value ends where the model starts a header (``[[ ##``); values of single-line fields
      (every type but ``str``, and a ``str`` field that is the last output) end at the line end.
    - Closed types (``bool``, ``Literal``, ``Enum``): ``closed_sets="constrain"`` constrains
      decoding to the values with a JSON-schema ``response_format`` (the value is written as JSON,
      ``"(A)"``); ``"map"`` maps the free completion to a value (``"True."`` -> ``True``);
      ``"auto"`` (default) constrains unless the LM is a local engine that cannot (transformers).
      On BBH, constraining beat mapping by 40 points with SmolLM2 (README).
    - A value that cannot be read as its type is ``None`` (``on_unparsable="none"``: a wrong
      answer for the metric, not an error that stops ``dspy.Evaluate`` after ``max_errors``), or
      raises DSPy's ``AdapterParseError`` (``"raise"``).

    The LM must continue an assistant message: :func:`dspy_greater.adapters.lm.local_lm`, or a
    vLLM server (``vllm serve``) behind ``dspy.LM``, which takes ``continue_final_message``.
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
        """Raise :class:`GreaterError` if this adapter cannot drive ``lm``: a local engine asked
        to constrain decoding it cannot, or a chat template that drops the newline the adapter
        forces after a header (some templates strip a continued message's end)."""
        if self.closed_sets == "constrain" and not _can_constrain(lm):
            raise GreaterError(
                f"{type(_local_engine(lm).reasoner).__name__} cannot constrain decoding to a "
                "closed set; use the vLLM backend (pip install dspy-greater[cpu] or [vllm]) or "
                "closed_sets='map'."
            )
        tokenizer = _local_tokenizer(lm)
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
            if constrain:
                options["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {
                        "name": name,
                        "schema": {"enum": [_json_value(c) for c in choices]},
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
    engine = _local_engine(lm)
    return engine is None or getattr(engine.reasoner, "supports_json_schema", False)


def _local_engine(lm: Any) -> Any:
    from .adapters.lm import LocalEngine

    engine = getattr(lm, "engine", None)
    return engine if isinstance(engine, LocalEngine) else None


def _local_tokenizer(lm: Any) -> Any:
    engine = _local_engine(lm)
    return getattr(engine.reasoner, "tokenizer", None) if engine is not None else None


def _continue_options(lm: Any) -> dict[str, Any]:
    """How to ask ``lm`` to continue the last (assistant) message: local engines always do;
    vLLM's OpenAI-compatible server needs the two body keys (sent through LiteLLM)."""
    if _local_engine(lm) is not None:
        return {}
    return {"continue_final_message": True, "add_generation_prompt": False}


def _cannot_continue(lm: Any, exc: Exception) -> Exception:
    if any(key in str(exc) for key in ("continue_final_message", "add_generation_prompt")):
        return CannotContinue(
            f"{getattr(lm, 'model', lm)!r} cannot continue an assistant message ({exc}). "
            "ForcedExtractionAdapter needs an LM that can: dspy_greater.adapters.lm.local_lm(), "
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
    """Run the calls of :meth:`ForcedExtractionAdapter._steps` on ``lm``."""
    try:
        call = next(steps)
        while True:
            with _calling(lm, call):
                outputs = lm(messages=call.messages, **call.options)
            call = steps.send(outputs)
    except StopIteration as done:
        return done.value


async def _adrive(steps: Generator[_Call, Any, Any], lm: Any) -> Any:
    """:func:`_drive` through ``lm.acall`` (``dspy.Predict.acall`` under this adapter)."""
    try:
        call = next(steps)
        while True:
            with _calling(lm, call):
                outputs = await lm.acall(messages=call.messages, **call.options)
            call = steps.send(outputs)
    except StopIteration as done:
        return done.value


# -- the gradient pass's view of the same messages --------------------------------------------
_OPEN, _CLOSE = "\ue000", "\ue001"  # private-use marks around the slot, removed before tokenizing


@dataclass
class AdapterRenderer:
    """Render (instructions, example, reasoning, answer) as :class:`ForcedExtractionAdapter`
    sends them, as token ids for the gradient pass (a :class:`~dspy_greater.adapters.base.Renderer`).

    ``signature`` needs a reasoning field and an answer field (``dspy.ChainOfThought``'s): the
    first output field is reasoned in, the last is the answer; the prompt being optimized is
    the signature's instructions. Examples are ``dspy.Example``s with the input fields and the
    answer field.
    """

    signature: type[dspy.Signature]
    tokenizer: Any
    adapter: ForcedExtractionAdapter
    demos: Sequence[dict[str, Any]] = ()
    # Whether a closed-set answer is written as JSON (the adapter constrains it for this LM:
    # ``adapter.constrains(lm)``); a ``str`` answer is written as is either way.
    constrained: bool = True

    continue_final_message = True
    stop = (STOP,)

    def __post_init__(self) -> None:
        names = list(self.signature.output_fields)
        if len(names) != 2:
            raise SlotError(
                f"GReaTer reasons in one field and answers in another; {self.signature.signature!r} "
                f"has output fields {names}. Wrap the predictor in dspy.ChainOfThought."
            )
        self.reasoning_field, self.answer_field = names

    def _inputs(self, example: Any) -> dict[str, Any]:
        missing = [k for k in self.signature.input_fields if k not in example]
        if missing:
            raise KeyError(f"The example lacks the input field(s) {missing}: {example}")
        return {k: example[k] for k in self.signature.input_fields}

    def _messages(
        self, prompt: str, example: Any, values: dict[str, str], field: str
    ) -> Conversation:
        signature = self.signature.with_instructions(prompt)
        return self.adapter.continuation(
            signature, list(self.demos), self._inputs(example), values, field
        )

    def messages(self, prompt_ids: Sequence[int], example: Any) -> Conversation:
        return self._messages(self.decode_prompt(prompt_ids), example, {}, self.reasoning_field)

    def decode_prompt(self, prompt_ids: Sequence[int]) -> str:
        # Instructions are rendered stripped; a leading space is the indentation's (below).
        return self.tokenizer.decode(list(prompt_ids)).strip()

    def _context(
        self, prompt: str, example: Any, values: dict[str, str], field: str
    ) -> tuple[str, tuple[int, ...], slice]:
        if not prompt.strip():
            raise SlotError("The instructions are empty; start from a non-empty prompt.")
        marked = self.tokenizer.apply_chat_template(
            self._messages(_OPEN + prompt + _CLOSE, example, values, field),
            tokenize=False,
            add_generation_prompt=False,
            continue_final_message=True,
        )
        if marked.count(_OPEN) != 1 or marked.count(_CLOSE) != 1:
            raise SlotError("The adapter did not render the instructions exactly once.")
        start = marked.index(_OPEN)
        text = marked.replace(_OPEN, "").replace(_CLOSE, "")
        end = marked.index(_CLOSE) - 1
        if text[start:end] != prompt:
            raise SlotError(
                f"The adapter renders the instructions {prompt!r} as "
                f"{text[start:end]!r}; use single-line instructions."
            )
        if start > 0 and text[start - 1] == " " and not prompt[0].isspace():
            # ChatAdapter indents the instructions; BPE tokenizers fold the space before a
            # word into the word's token, so that space belongs to the slot's first token.
            start -= 1
        ids, slot = token_span(self.tokenizer, text, start, end)
        return text, ids, slot

    def encode_prompt(self, prompt: str, example: Any) -> tuple[int, ...]:
        _, ids, slot = self._context(prompt, example, {}, self.reasoning_field)
        return ids[slot]

    def reasoning_text(self, reasoning_ids: Sequence[int]) -> str:
        """The reasoning field's value as the adapter writes it back: cut at a header, stripped."""
        return self.tokenizer.decode(list(reasoning_ids)).split(STOP, 1)[0].strip()

    def answer_ids(self, example: Any) -> tuple[int, ...]:
        """The gold answer as the adapter formats the answer field, as the model writes it."""
        info = self.signature.output_fields[self.answer_field]
        gold = example[self.answer_field]
        if self.constrained and closed_choices(info.annotation) is not None:
            text = json.dumps(_json_value(parse_field(str(gold), info.annotation)))
        else:
            text = format_field_value(info, gold)
        ids = tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if not ids:
            raise ValueError(
                f"The gold answer {example[self.answer_field]!r} tokenizes to nothing."
            )
        return ids

    def render(
        self, prompt_ids: Sequence[int], example: Any, reasoning_ids: Sequence[int] = ()
    ) -> RenderedExample:
        """``[messages up to the answer header, gold answer]``: the tokens the adapter's answer
        call continues, then the gold answer; spans from the tokenizer's offsets."""
        prompt = self.decode_prompt(prompt_ids)
        reasoning = self.reasoning_text(reasoning_ids)
        text, ids, slot = self._context(
            prompt, example, {self.reasoning_field: reasoning}, self.answer_field
        )
        if ids[slot] != tuple(prompt_ids):
            raise SlotError(
                f"The prompt ids {list(prompt_ids)} decode to {prompt!r}, which tokenizes to "
                f"{list(ids[slot])} in context; the ids do not survive a text round trip."
            )
        # Characters of the reasoning value: after the reasoning header, before the answer's.
        r_start = text.rindex(header(self.reasoning_field)) + len(header(self.reasoning_field)) + 1
        r_end = r_start + len(reasoning)
        offsets = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)[
            "offset_mapping"
        ]
        first = next(i for i, (a, b) in enumerate(offsets) if b > r_start)
        after = next((i for i, (a, b) in enumerate(offsets) if a >= r_end and i >= first), len(ids))
        answer = self.answer_ids(example)
        a0 = len(ids)
        return RenderedExample(
            ids=ids + answer,
            slot=slot,
            reasoning=slice(first, after),
            extractor=slice(after, a0),
            answer=slice(a0, a0 + len(answer)),
        )
