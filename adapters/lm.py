"""DSPy LMs over the local engines, by DSPy 3.4's supported route (``dspy.LM(engine=...)``).

``local_lm()`` returns a ``dspy.LM`` whose engine runs the embedded (or any local) model on vLLM's
offline engine, or on ``transformers`` when vLLM is missing. DSPy calls an LM once per example,
often from many threads (``dspy.Evaluate``, ``dspy.Parallel``, optimizers), and ``vllm.LLM`` is not
thread-safe: the engine funnels every call through one worker thread that gathers concurrent
requests for a few milliseconds and sends them to the model as one batch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dspy
from dspy.lm15 import Message, Response, Usage, response_to_events

from dspy_greater.errors import GreaterError

from .base import Completion, Conversation, Reasoner, chat_prompt_ids

logger = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 1024


def make_reasoner(model: str | os.PathLike[str], *, backend: str = "auto", **kwargs: Any) -> Reasoner:
    """A local reasoner: ``"vllm"``, ``"hf"`` (transformers), or ``"auto"`` (vLLM when installed)."""
    from .vllm_engine import VLLMReasoner, vllm_available

    if backend == "auto":
        backend = "vllm" if vllm_available() else "hf"
        if backend == "hf":
            logger.warning("vLLM is not installed: generating with transformers' generate "
                           "(slower). Install dspy-greater[cpu] or [vllm] for vLLM.")
    if backend == "vllm":
        return VLLMReasoner(model, **kwargs)
    if backend == "hf":
        from .hf import HFReasoner

        return HFReasoner(model, **kwargs)
    raise ValueError(f"backend must be 'auto', 'vllm' or 'hf', got {backend!r}.")


@dataclass
class _Job:
    ids: list[int]
    max_tokens: int
    stop: tuple[str, ...]
    schema: str | None  # a JSON schema (serialized) the completion must follow
    temperature: float
    future: Future


class LocalEngine:
    """``complete(Request) -> Response`` for ``dspy.LM(engine=...)`` over a local reasoner.

    Greedy at ``temperature`` 0 (``local_lm``'s default), sampled above it (COPRO, MIPROv2 and
    GEPA ask for that to vary their proposals; DSPy asks once per candidate for ``n`` > 1,
    sampled calls vary). A conversation
    that ends with an assistant message is continued, not answered anew. A ``response_format``
    with a JSON schema constrains the completion (vLLM reasoners only). Copies share the engine:
    a deep-copied DSPy program must not copy model weights.
    """

    def __init__(self, reasoner: Reasoner, *, max_batch: int = 256, gather_ms: float = 5.0) -> None:
        self.reasoner = reasoner
        self.max_batch = max_batch
        self.gather_seconds = gather_ms / 1000
        self.batch_sizes: list[int] = []  # size of every batch sent to the model (for measuring)
        self._jobs: queue.Queue[_Job] = queue.Queue()
        self._worker = threading.Thread(target=self._serve, name="dspy-greater-engine", daemon=True)
        self._worker.start()

    def __deepcopy__(self, memo: dict[int, Any]) -> LocalEngine:
        return self

    # -- DSPy's engine protocol ----------------------------------------------------------
    def complete(self, request: Any) -> Response:
        conversation = _conversation(request)
        config = request.config
        temperature = float((config.temperature if config is not None else None) or 0.0)
        max_tokens = (config.max_tokens if config is not None else None) or DEFAULT_MAX_TOKENS
        stop = tuple(config.stop or ()) if config is not None else ()
        schema = _json_schema(config.response_format if config is not None else None)
        if schema is not None and not getattr(self.reasoner, "supports_json_schema", False):
            raise GreaterError(
                f"{type(self.reasoner).__name__} cannot constrain generation to a JSON schema "
                "(response_format); use the vLLM backend (pip install dspy-greater[cpu] or [vllm]).")
        continuing = conversation[-1]["role"] == "assistant"
        [ids] = chat_prompt_ids(self.reasoner.tokenizer, [conversation],  # type: ignore[attr-defined]
                                continue_final_message=continuing)
        future: Future = Future()
        self._jobs.put(_Job(ids, max_tokens, stop, schema, temperature, future))
        completion: Completion = future.result()
        return Response(
            id=None, model=request.model, message=Message.assistant(completion.text),
            finish_reason=completion.finish_reason,
            usage=Usage(input_tokens=len(ids), output_tokens=len(completion.token_ids)))

    def stream(self, request: Any) -> Any:
        return response_to_events(self.complete(request))

    def close(self) -> None:
        """Nothing to release here: the model belongs to the reasoner, shared by its users."""

    # -- batching ------------------------------------------------------------------------
    def _serve(self) -> None:
        while True:
            jobs = [self._jobs.get()]
            deadline = time.monotonic() + self.gather_seconds
            while len(jobs) < self.max_batch:
                try:
                    jobs.append(self._jobs.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            groups: dict[tuple[int, tuple[str, ...], str | None, float], list[_Job]] = {}
            for job in jobs:
                key = (job.max_tokens, job.stop, job.schema, job.temperature)
                groups.setdefault(key, []).append(job)
            for (max_tokens, stop, schema, temperature), group in groups.items():
                self.batch_sizes.append(len(group))
                options: dict[str, Any] = {} if schema is None else {"json_schema": json.loads(schema)}
                if temperature > 0:  # keyword only when sampling: greedy reasoners need not know it
                    options["temperature"] = temperature
                try:
                    outs = self.reasoner.generate([j.ids for j in group], max_new_tokens=max_tokens,
                                                  stop=stop, **options)
                except Exception as exc:  # hand the failure to every caller of the batch
                    for job in group:
                        job.future.set_exception(exc)
                    continue
                for job, out in zip(group, outs):
                    job.future.set_result(out)


class AsyncLocalEngine:
    """The async counterpart of :class:`LocalEngine` (for ``acall`` and ``dspy.streamify``)."""

    def __init__(self, sync: LocalEngine) -> None:
        self.sync = sync

    def __deepcopy__(self, memo: dict[int, Any]) -> AsyncLocalEngine:
        return self

    async def complete(self, request: Any) -> Response:
        return await asyncio.to_thread(self.sync.complete, request)

    async def stream(self, request: Any) -> Any:
        for event in response_to_events(await self.complete(request)):
            yield event

    async def aclose(self) -> None:
        """Nothing to release (see :meth:`LocalEngine.close`)."""


def _json_schema(response_format: Any) -> str | None:
    """The JSON schema of an OpenAI-style ``response_format`` (serialized, to group jobs by it);
    None for no format. Other formats (``json_object``, pydantic classes) are refused."""
    if response_format is None:
        return None
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        schema = response_format.get("schema") or response_format.get("json_schema", {}).get("schema")
        if isinstance(schema, dict):
            return json.dumps(schema, sort_keys=True)
    raise GreaterError(f"Local engines take response_format={{'type': 'json_schema', ...}} only, "
                       f"got {response_format!r}.")


def _conversation(request: Any) -> Conversation:
    messages: Conversation = []
    if request.system is not None:
        system = request.system if isinstance(request.system, str) else "".join(
            getattr(p, "text", "") or "" for p in request.system)
        messages.append({"role": "system", "content": system})
    messages.extend({"role": m.role, "content": m.text or ""} for m in request.messages)
    return messages


def local_lm(
    model: str | os.PathLike[str] | None = None,
    *,
    backend: str = "auto",
    reasoner: Reasoner | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    **lm_kwargs: Any,
) -> dspy.LM:
    """A ``dspy.LM`` on a local model (the embedded SmolLM2 by default).

    ``backend`` picks the reasoner (see :func:`make_reasoner`); or pass a built ``reasoner``.
    Everything DSPy does with an LM works on it (history, usage, caching, threads).
    """
    if reasoner is None:
        if model is None:
            from dspy_greater.models import default_model

            model = default_model()
        reasoner = make_reasoner(model, backend=backend)
    name = Path(os.fspath(model)).name if model is not None else type(reasoner).__name__
    engine = LocalEngine(reasoner)
    # The model string is part of DSPy's cache key: name the engine kind in it.
    return dspy.LM(f"local/{type(reasoner).__name__}/{name}", engine=engine,
                   async_engine=AsyncLocalEngine(engine), temperature=0.0, max_tokens=max_tokens,
                   **lm_kwargs)
