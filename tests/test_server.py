"""The server reasoner against a real `vllm serve` of the embedded model on 127.0.0.1."""

from __future__ import annotations

from typing import Literal

import dspy
import pytest
from dspy.utils.exceptions import AdapterParseError

from dspy_greater.adapters.vllm_server import ServerUnavailable, free_port, launch_vllm_server
from dspy_greater.server_reasoner import ServerReasoner

SERVED_NAME = "smollm2"


class YesNo(dspy.Signature):
    """Answer yes or no."""

    question: str = dspy.InputField()
    answer: Literal["yes", "no"] = dspy.OutputField()


CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name three colours."},
    ],
]


@pytest.fixture(scope="module")
def server(smollm2):
    """`vllm serve` on a free loopback port; bounded wait; always torn down."""
    with launch_vllm_server(smollm2, served_name=SERVED_NAME, max_model_len=2048) as base:
        yield base


@pytest.mark.parametrize("engine", ["auto", "litellm"])
def test_server_reasoner_matches_the_offline_engine(server, smollm2, vllm_reasoner, engine):
    lm = dspy.LM(
        f"hosted_vllm/{SERVED_NAME}", api_base=server, api_key="none", engine=engine, cache=False
    )
    reasoner = ServerReasoner(lm, tokenizer=smollm2)
    remote = reasoner.chat(CONVERSATIONS, max_new_tokens=16)
    local = vllm_reasoner.chat(CONVERSATIONS, max_new_tokens=16)
    assert [r.text for r in remote] == [c.text for c in local]
    partial = CONVERSATIONS[0] + [{"role": "assistant", "content": "The capital of France is"}]
    [continued] = reasoner.chat([partial], max_new_tokens=4, continue_final_message=True)
    assert "Paris" in continued.text


def test_a_dspy_program_runs_against_the_server(server):
    lm = dspy.LM(
        f"openai/{SERVED_NAME}", api_base=server, api_key="none", cache=False, max_tokens=32
    )
    with dspy.context(lm=lm):
        try:
            dspy.Predict("question -> answer")(question="What is the capital of France?")
        except AdapterParseError:
            pass  # SmolLM2 ignores ChatAdapter's format; the call still reached the server
    assert lm.history and lm.history[0]["usage"]["completion_tokens"] >= 1


def test_wrong_model_name_and_unreachable_server_are_named(server, smollm2):
    wrong = dspy.LM(
        "hosted_vllm/no-such-model", api_base=server, api_key="none", cache=False, num_retries=0
    )
    with pytest.raises(ServerUnavailable, match=f"serves \\['{SERVED_NAME}'\\]"):
        ServerReasoner(wrong, tokenizer=smollm2)
    nowhere = f"http://127.0.0.1:{free_port()}/v1"
    gone = dspy.LM(
        f"hosted_vllm/{SERVED_NAME}", api_base=nowhere, api_key="none", cache=False, num_retries=0
    )
    with pytest.raises(ServerUnavailable, match="Cannot reach"):
        ServerReasoner(gone, tokenizer=smollm2)


def test_a_port_in_use_is_refused(server, smollm2):
    port = int(server.rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(ServerUnavailable, match=f"Port {port} .* already in use"):
        with launch_vllm_server(smollm2, served_name="again", port=port):
            pass


@pytest.mark.parametrize("model", [f"hosted_vllm/{SERVED_NAME}", f"openai/{SERVED_NAME}"])
def test_the_forced_extraction_adapter_runs_on_the_server(server, vllm_reasoner, model):
    from dspy_greater.forced_extraction import ForcedExtractionAdapter
    from dspy_greater.lm import local_lm

    questions = ["Is Paris in France?", "Is the sun cold?"]
    program = dspy.ChainOfThought(YesNo)
    remote_lm = dspy.LM(
        model, api_base=server, api_key="none", cache=False, max_tokens=24, temperature=0.0
    )
    predictions = {}
    for name, lm in (
        ("server", remote_lm),
        ("local", local_lm(reasoner=vllm_reasoner, max_tokens=24, cache=False)),
    ):
        with dspy.context(lm=lm, adapter=ForcedExtractionAdapter()):
            predictions[name] = [program(question=q) for q in questions]
    assert all(p.answer in ("yes", "no") for p in predictions["server"])
    # The server continued the forced headers exactly as the local engine did.
    assert [(p.reasoning, p.answer) for p in predictions["server"]] == [
        (p.reasoning, p.answer) for p in predictions["local"]
    ]
