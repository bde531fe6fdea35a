"""DSPy LMs over the local engines (``dspy.LM(engine=...)``, DSPy 3.4's supported route).

``local_lm()`` returns a ``dspy.LM`` whose engine runs the embedded (or any local) model on vLLM's
offline engine, or on ``transformers`` when vLLM is missing. DSPy calls an LM once per example,
often from many threads (``dspy.Evaluate``, ``dspy.Parallel``, optimizers), and ``vllm.LLM`` is not
thread-safe: the engine funnels every call through one worker thread. On vLLM that thread batches
continuously: a call joins the requests in flight at the model's next step. On other reasoners it
gathers the calls that arrive within a few milliseconds and sends them to the model as one batch.
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
import weakref
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dspy
from dspy.lm15 import Message, Response, Usage, response_to_events

from .adapters import make_reasoner
from .adapters.base import Completion, Conversation, Reasoner, chat_prompt_ids
from .errors import GreaterError
from .search import GreaterConfig

logger = logging.getLogger(__name__)

# One default for the reasoning budget: the search's (the paper's 1,024 tokens). The budgets of
# GReaTer(auto=...) and the CLI's --budget lower it (light: 128).
DEFAULT_MAX_TOKENS = GreaterConfig.max_reasoning_tokens


@dataclass
class _Request:
    ids: list[int]
    max_tokens: int
    stop: tuple[str, ...]
    schema: str | None  # a JSON schema (serialized) the completion must follow
    temperature: float
    future: Future


# Marks where LocalEngine.cancel() was called in the engine's queue: the calls before it end.
_CANCEL = _Request(ids=[], max_tokens=0, stop=(), schema=None, temperature=0.0, future=Future())


def _interrupted() -> KeyboardInterrupt:
    return KeyboardInterrupt("the call was cancelled (LocalEngine.cancel, on Ctrl-C)")


class LocalEngine:
    """``complete(Request) -> Response`` for ``dspy.LM(engine=...)`` over a local reasoner.

    Greedy at ``temperature`` 0 (``local_lm``'s default), sampled above it (COPRO, MIPROv2 and
    GEPA ask for that to vary their proposals; DSPy asks once per candidate for ``n`` > 1,
    sampled calls vary). A conversation
    that ends with an assistant message is continued, not answered anew. A ``response_format``
    with a JSON schema constrains the completion (vLLM reasoners only). Copies share the engine:
    a deep-copied DSPy program must not copy model weights.

    ``continuous`` (default: where the reasoner can, i.e. vLLM) batches continuously; otherwise
    the calls arriving within ``gather_ms`` of each other form one batch of at most ``max_batch``
    (vLLM's own ``max_num_seqs`` caps a continuous batch).
    """

    def __init__(
        self,
        reasoner: Reasoner,
        *,
        max_batch: int = 256,
        gather_ms: float = 5.0,
        continuous: bool | None = None,
    ) -> None:
        self.reasoner = reasoner
        # continuous batching where the reasoner can (``submit``/``step``/``abort``: vLLM's);
        # else gather
        supported = callable(getattr(reasoner, "submit", None))
        if continuous and not supported:
            raise GreaterError(
                f"{type(reasoner).__name__} cannot batch continuously (no submit/step); "
                "use the vLLM backend, or continuous=None."
            )
        self.continuous = supported if continuous is None else continuous
        self.max_batch = max_batch
        self.gather_seconds = gather_ms / 1000
        # for measuring: the size of every batch sent to the model, or (continuous batching) the
        # requests in flight at every model step
        self.batch_sizes: list[int] = []
        self.poll_seconds = 1.0  # how often a waiting caller checks that the worker still runs
        self._died: BaseException | None = None
        self._in_flight: dict[str, _Request] = {}  # continuous batching: by request id
        self._jobs: queue.Queue[_Request] = queue.Queue()
        self._worker = threading.Thread(target=self._serve, name="dspy-greater-engine", daemon=True)
        self._worker.start()
        _ENGINES.add(self)

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
            self.reasoner.tokenizer,  # type: ignore[attr-defined]
            [conversation],
            continue_final_message=continuing,
        )
        future: Future = Future()
        self._jobs.put(_Request(ids, max_tokens, stop, schema, temperature, future))
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

    def cancel(self) -> None:
        """End every call made so far that has not returned: each raises ``KeyboardInterrupt``
        in its thread, and its vLLM request ends. Later calls run as usual. For Ctrl-C: DSPy's
        worker threads would otherwise generate on, and Python waits for them before it exits.
        (Without continuous batching, a batch already generating finishes first.)"""
        self._jobs.put(_CANCEL)

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
                if self.continuous:
                    self._step()
                else:
                    self._run_batch(self._gather())
        except BaseException as exc:  # the thread ends: no caller may wait on it any more
            self._died = exc
            stopped = self._stopped(exc)
            self._fail_in_flight(stopped)
            for job in self._waiting():
                if not job.future.done():
                    job.future.set_exception(stopped)
            logger.error("The local engine's worker thread stopped: %r", exc)

    def _waiting(self) -> list[_Request]:
        """Every job queued now, taken off the queue (without waiting for more)."""
        jobs = []
        while True:
            try:
                jobs.append(self._jobs.get_nowait())
            except queue.Empty:
                return jobs

    def _step(self) -> None:
        """Continuous batching (a reasoner with ``submit``/``step``, vLLM's): every job that
        arrived joins the requests in flight, then the model takes one step. DSPy's threads
        reach the engine spread over a second or more (each formats its prompt first); here a
        late one waits one model step, not for a whole batch."""
        arrived = [] if self._in_flight else [self._jobs.get()]  # idle: wait for work
        for job in [*arrived, *self._waiting()]:
            if job is _CANCEL:  # the jobs before it are in flight now
                self._fail_in_flight(_interrupted())
                continue
            try:
                request_id = self.reasoner.submit(  # type: ignore[attr-defined]
                    job.ids, max_new_tokens=job.max_tokens, stop=job.stop, **_options(job)
                )
            except Exception as exc:  # this prompt is refused (too long, bad options): its caller
                job.future.set_exception(exc)
                continue
            self._in_flight[request_id] = job
        if not self._in_flight:
            return
        self.batch_sizes.append(len(self._in_flight))
        try:
            finished = self.reasoner.step(list(self._in_flight))  # type: ignore[attr-defined]
        except Exception as exc:  # the engine failed: every request in flight fails with it
            self._fail_in_flight(exc)
            return
        for request_id, completion in finished:
            self._in_flight.pop(request_id).future.set_result(completion)

    def _fail_in_flight(self, exc: BaseException) -> None:
        """End the requests of every call in flight (else they run on, wasted), then fail the
        calls: in this order, a call that has returned has no request left in the engine."""
        jobs, self._in_flight = self._in_flight, {}
        try:
            self.reasoner.abort(list(jobs))  # type: ignore[attr-defined]
        except Exception:  # the engine is broken: nothing more to end
            logger.warning("Could not abort %d vLLM requests.", len(jobs), exc_info=True)
        for job in jobs.values():
            job.future.set_exception(exc)

    def _gather(self) -> list[_Request]:
        """The next job, and every job that arrives within ``gather_ms`` after it."""
        jobs = [self._jobs.get()]
        deadline = time.monotonic() + self.gather_seconds
        while len(jobs) < self.max_batch:
            try:
                jobs.append(self._jobs.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        return jobs

    def _run_batch(self, jobs: list[_Request]) -> None:
        cancelled = [i for i, job in enumerate(jobs) if job is _CANCEL]
        if cancelled:  # the jobs before the last cancel end; those after it run
            for job in jobs[: cancelled[-1]]:
                if job is not _CANCEL:
                    job.future.set_exception(_interrupted())
            jobs = jobs[cancelled[-1] + 1 :]
        groups: dict[tuple[int, tuple[str, ...], str | None, float], list[_Request]] = {}
        for job in jobs:
            groups.setdefault((job.max_tokens, job.stop, job.schema, job.temperature), []).append(
                job
            )
        for (max_tokens, stop, _, _), group in groups.items():
            self.batch_sizes.append(len(group))
            try:
                outs = self.reasoner.generate(
                    [j.ids for j in group],
                    max_new_tokens=max_tokens,
                    stop=stop,
                    **_options(group[0]),
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


_ENGINES: weakref.WeakSet[LocalEngine] = weakref.WeakSet()


def cancel_local_calls() -> None:
    """End every call waiting on a local LM (`LocalEngine.cancel` on each engine)."""
    for engine in list(_ENGINES):
        engine.cancel()


def _options(job: _Request) -> dict[str, Any]:
    """The reasoner's keyword options for a job: a JSON schema, and the temperature when sampling
    (greedy reasoners need not know that keyword)."""
    options: dict[str, Any] = {} if job.schema is None else {"json_schema": json.loads(job.schema)}
    if job.temperature > 0:
        options["temperature"] = job.temperature
    return options


def local_reasoner(lm: Any) -> Reasoner | None:
    """The reasoner behind ``lm`` when it is a local engine (`local_lm`); None for any other
    LM (a server)."""
    engine = getattr(lm, "engine", None)
    return engine.reasoner if isinstance(engine, LocalEngine) else None


class AsyncLocalEngine:
    """The async counterpart of `LocalEngine` (for ``acall`` and ``dspy.streamify``)."""

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
        """Nothing to release (see `LocalEngine.close`)."""


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
    dtype: str | None = None,
    reasoner: Reasoner | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    max_model_len: int | None = None,
    continuous: bool | None = None,
    **lm_kwargs: Any,
) -> dspy.LM:
    """A ``dspy.LM`` on a local model, for ``dspy.configure(lm=...)`` and `GReaTer`.

    Everything DSPy does with an LM works on it (history, usage, caching, threads); concurrent
    calls reach the model together. Its model string names the weights (folder, files, dtype),
    so DSPy's cache never serves one model's answers to another.

    Args:
        model: A Hugging Face model folder, or the name of an embedded model
            (``"qwen2.5-coder-1.5b"``, run in its registered dtype); None for the embedded
            SmolLM2-135M.
        backend: ``"vllm"`` (vLLM's offline engine), ``"hf"`` (transformers' ``generate``), or
            ``"auto"``: vLLM when it is installed (see
            `make_reasoner`).
        dtype: The engine's dtype (``"float32"``, ``"bfloat16"``, ...); None for an embedded
            model's registered dtype, and float32 for a folder.
        reasoner: An engine already built (``model`` and ``backend`` are then ignored).
        max_tokens: The default budget of new tokens per call.
        max_model_len: vLLM's context, prompt and new tokens together (default 4,096; up to
            the model's own limit). Raise it for long inputs; transformers uses the model's.
        continuous: Batch continuously (a call joins the requests in flight at the model's next
            step); None where the reasoner can (vLLM), False for batches of the calls that
            arrive within a few milliseconds (see `LocalEngine`).
        **lm_kwargs: Passed to ``dspy.LM`` (``cache=False``, ``num_retries``, ...).

    Returns:
        A ``dspy.LM``, greedy (temperature 0) unless a call asks for sampling.
    """
    if reasoner is None:
        from .models import registered_dtype, resolve_model

        extra = {"max_model_len": max_model_len} if max_model_len else {}
        reasoner = make_reasoner(
            resolve_model(model), backend=backend, dtype=dtype or registered_dtype(model), **extra
        )
    engine = LocalEngine(reasoner, continuous=continuous)
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
