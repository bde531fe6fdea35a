"""DSPy LMs over the local engines, by DSPy 3.4's supported route (``dspy.LM(engine=...)``).

``local_lm()`` returns a ``dspy.LM`` whose engine runs the embedded (or any local) model on vLLM's
offline engine, or on ``transformers`` when vLLM is missing. DSPy calls an LM once per example,
often from many threads (``dspy.Evaluate``, ``dspy.Parallel``, optimizers), and ``vllm.LLM`` is not
thread-safe: the engine funnels every call through one worker thread that gathers concurrent
requests for a few milliseconds and sends them to the model as one batch.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import queue
import threading
import time
import uuid
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


def make_reasoner(
    model: str | os.PathLike[str], *, backend: str = "auto", **kwargs: Any
) -> Reasoner:
    """A local reasoner: ``"vllm"``, ``"hf"`` (transformers), or ``"auto"`` (vLLM when installed)."""
    from .vllm_engine import VLLMReasoner, vllm_available

    if backend == "auto":
        backend = "vllm" if vllm_available() else "hf"
        if backend == "hf":
            logger.warning(
                "vLLM is not installed: generating with transformers' generate "
                "(slower). Install dspy-greater[cpu] or [vllm] for vLLM."
            )
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
        self.poll_seconds = 1.0  # how often a waiting caller checks that the worker still runs
        self._died: BaseException | None = None
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
                "(response_format); use the vLLM backend (pip install dspy-greater[cpu] or [vllm])."
            )
        continuing = conversation[-1]["role"] == "assistant"
        [ids] = chat_prompt_ids(
            self.reasoner.tokenizer,
            [conversation],  # type: ignore[attr-defined]
            continue_final_message=continuing,
        )
        future: Future = Future()
        self._jobs.put(_Job(ids, max_tokens, stop, schema, temperature, future))
        completion = self._wait(future)
        return Response(
            id=None,
            model=request.model,
            message=Message.assistant(completion.text),
            finish_reason=completion.finish_reason,
            usage=Usage(input_tokens=len(ids), output_tokens=len(completion.token_ids)),
        )

    def stream(self, request: Any) -> Any:
        return response_to_events(self.complete(request))

    def close(self) -> None:
        """Nothing to release here: the model belongs to the reasoner, shared by its users."""

    # -- batching ------------------------------------------------------------------------
    def _wait(self, future: Future) -> Completion:
        """The job's completion, or the worker's failure: never a wait on a worker that died."""
        while True:
            try:
                return future.result(timeout=self.poll_seconds)
            except TimeoutError:
                if not self._worker.is_alive() and not future.done():
                    raise self._stopped(self._died) from self._died

    @staticmethod
    def _stopped(cause: BaseException | None) -> GreaterError:
        return GreaterError(
            f"The local engine's worker thread stopped ({cause!r}); this LM "
            "cannot answer any more. Build a new one with local_lm()."
        )

    def _serve(self) -> None:
        try:
            while True:
                self._run_batch(self._gather())
        except BaseException as exc:  # the thread ends: no caller may wait on it any more
            self._died = exc
            while True:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if not job.future.done():
                    job.future.set_exception(self._stopped(exc))
            logger.error("The local engine's worker thread stopped: %r", exc)

    def _gather(self) -> list[_Job]:
        """The next job, and every job that arrives within ``gather_ms`` after it."""
        jobs = [self._jobs.get()]
        deadline = time.monotonic() + self.gather_seconds
        while len(jobs) < self.max_batch:
            try:
                jobs.append(self._jobs.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        return jobs

    def _run_batch(self, jobs: list[_Job]) -> None:
        groups: dict[tuple[int, tuple[str, ...], str | None, float], list[_Job]] = {}
        for job in jobs:
            groups.setdefault((job.max_tokens, job.stop, job.schema, job.temperature), []).append(
                job
            )
        for (max_tokens, stop, schema, temperature), group in groups.items():
            self.batch_sizes.append(len(group))
            options: dict[str, Any] = {} if schema is None else {"json_schema": json.loads(schema)}
            if temperature > 0:  # keyword only when sampling: greedy reasoners need not know it
                options["temperature"] = temperature
            try:
                outs = self.reasoner.generate(
                    [j.ids for j in group], max_new_tokens=max_tokens, stop=stop, **options
                )
                if len(outs) != len(group):
                    raise GreaterError(
                        f"{type(self.reasoner).__name__}.generate returned {len(outs)} "
                        f"completions for {len(group)} prompts."
                    )
            except Exception as exc:  # hand the failure to every caller of the batch
                for job in group:
                    job.future.set_exception(exc)
                continue
            except BaseException as exc:  # the worker itself stops: fail every gathered job
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(self._stopped(exc))
                raise
            for job, out in zip(group, outs, strict=True):
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
        schema = response_format.get("schema") or response_format.get("json_schema", {}).get(
            "schema"
        )
        if isinstance(schema, dict):
            return json.dumps(schema, sort_keys=True)
    raise GreaterError(
        f"Local engines take response_format={{'type': 'json_schema', ...}} only, "
        f"got {response_format!r}."
    )


def _conversation(request: Any) -> Conversation:
    messages: Conversation = []
    if request.system is not None:
        system = (
            request.system
            if isinstance(request.system, str)
            else "".join(getattr(p, "text", "") or "" for p in request.system)
        )
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
    engine = LocalEngine(reasoner)
    # DSPy's cache key holds the model string: it names the weights, not just the folder's name.
    return dspy.LM(
        f"local/{type(reasoner).__name__}/{model_identity(reasoner)}",
        engine=engine,
        async_engine=AsyncLocalEngine(engine),
        temperature=0.0,
        max_tokens=max_tokens,
        **lm_kwargs,
    )


_FINGERPRINTED = {".safetensors", ".bin", ".gguf", ".pt", ".json", ".jinja", ".model"}


def model_identity(reasoner: Any) -> str:
    """``<folder name>-<digest>``: the digest covers the resolved folder, a fingerprint of its
    files (names, sizes, the first 64 KiB and last 1 MiB of each: cheap, and different for other
    weights saved under the same name), the dtype and the engine kind. A reasoner that names no
    folder gets a digest of its own, so that its answers are never served to another model."""
    path = getattr(reasoner, "model_path", None)
    if path is None:
        return f"{type(reasoner).__name__}-{uuid.uuid4().hex[:16]}"
    folder = Path(os.fspath(path)).resolve()
    digest = hashlib.sha256(
        json.dumps(
            [str(folder), type(reasoner).__qualname__, str(getattr(reasoner, "dtype", None))]
        ).encode()
    )
    files = sorted(folder.iterdir()) if folder.is_dir() else [folder]
    for file in files:
        if file.is_file() and file.suffix in _FINGERPRINTED:
            size = file.stat().st_size
            digest.update(f"{file.name}:{size}:".encode())
            with file.open("rb") as stream:
                digest.update(stream.read(64 << 10))
                stream.seek(max(0, size - (1 << 20)))
                digest.update(stream.read())
    return f"{folder.name}-{digest.hexdigest()[:16]}"
