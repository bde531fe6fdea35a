"""Reasoning on an OpenAI-compatible server (such as ``vllm serve``) through a ``dspy.LM``."""

from __future__ import annotations

import logging
import os
import urllib.error
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dspy
from dspy.lm15 import Config, Message, Request

from .adapters.base import Completion, Conversation
from .adapters.vllm_server import ServerUnavailable, served_models

logger = logging.getLogger(__name__)


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
                f"LM after one of them, e.g. dspy.LM('hosted_vllm/{(models or ['NAME'])[0]}', ...)."
            )
        if "continue_final_message" in str(exc) or "add_generation_prompt" in str(exc):
            return ServerUnavailable(
                f"The server at {self.api_base} cannot continue an assistant message "
                f"({exc}). Use vLLM's `vllm serve`, which accepts continue_final_message, or a "
                "local engine (dspy_greater.lm.local_lm)."
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
        """Complete each conversation greedily on the server (see
        `Reasoner`).

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
