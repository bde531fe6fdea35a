"""The forced-extraction adapter on the real model, through real DSPy programs."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import warnings
from typing import Literal

import dspy
import pytest
from dspy.utils.exceptions import AdapterParseError

import dspy_greater
from dspy_greater.adapters.base import chat_prompt_ids
from dspy_greater.adapters.hf_gradient import HFGradientModel
from dspy_greater.adapters.hf_reasoner import HFReasoner
from dspy_greater.errors import GreaterError, SlotError
from dspy_greater.forced_extraction import CannotContinue, ForcedExtractionAdapter
from dspy_greater.lm import LocalEngine, local_lm
from dspy_greater.renderers import AdapterRenderer
from dspy_greater.values import map_to_choice, parse_field
from tests.helpers import even_questions, tiny_config

YesNo = Literal["yes", "no"]


class Sports(dspy.Signature):
    """Answer yes or no."""

    question: str = dspy.InputField()
    answer: YesNo = dspy.OutputField()


@pytest.fixture(scope="module")
def lm(vllm_reasoner):
    return local_lm(reasoner=vllm_reasoner, max_tokens=48, cache=False)


@pytest.fixture(scope="module")
def bbh(shared_bbh):
    return {
        task: dspy_greater.load_bbh(shared_bbh / f"{task}.json")[:12]
        for task in ("boolean_expressions", "sports_understanding", "causal_judgement")
        if (shared_bbh / f"{task}.json").exists()
    } or pytest.skip("no BBH tasks")


# -- rendering ---------------------------------------------------------------------------------
def test_system_placement_renders_exactly_what_chat_adapter_renders():
    signature = dspy.ChainOfThought("question -> answer").predict.signature
    demos = [{"question": "Is 2 even?", "reasoning": "2 = 2 * 1.", "answer": "yes"}]
    inputs = {"question": "Is 3 even?"}
    ours = ForcedExtractionAdapter().format(signature, demos, inputs)
    assert ours == dspy.ChatAdapter().format(signature, demos, inputs)


def test_after_inputs_moves_only_the_instructions():
    signature = dspy.ChainOfThought(Sports).predict.signature
    inputs = {"question": "Is Messi a soccer player?"}
    chat = dspy.ChatAdapter().format(signature, [], inputs)
    ours = ForcedExtractionAdapter(instructions="after_inputs").format(signature, [], inputs)
    objective = dspy.ChatAdapter().format_task_description(signature)
    assert ours[0]["content"] == chat[0]["content"].replace("\n" + objective, "")
    assert signature.instructions not in ours[0]["content"]
    assert ours[-1]["content"] == chat[-1]["content"] + "\n\n" + signature.instructions
    assert [m["role"] for m in ours] == [m["role"] for m in chat]


def test_the_continuation_forces_each_header_after_the_values_so_far():
    signature = dspy.ChainOfThought("question -> answer").predict.signature
    adapter = ForcedExtractionAdapter()
    messages = adapter.continuation(
        signature, [], {"question": "q"}, {"reasoning": "Because."}, "answer"
    )
    assert messages[:-1] == adapter.format(signature, [], {"question": "q"})
    assert messages[-1] == {
        "role": "assistant",
        "content": "[[ ## reasoning ## ]]\nBecause.\n\n[[ ## answer ## ]]\n",
    }


def test_the_chat_template_keeps_the_forced_newline(smollm2):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    signature = dspy.ChainOfThought("question -> answer").predict.signature
    messages = ForcedExtractionAdapter().continuation(
        signature, [], {"question": "q"}, {}, "reasoning"
    )
    [ids] = chat_prompt_ids(tokenizer, [messages], continue_final_message=True)
    assert tokenizer.decode(ids).endswith("<|im_start|>assistant\n[[ ## reasoning ## ]]\n")


def test_a_template_that_strips_the_forced_newline_is_refused(smollm2, vllm_reasoner):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    tokenizer.chat_template = tokenizer.chat_template.replace(
        "message['content']", "message['content'] | trim"
    )
    stripping = type("Stripping", (), {"tokenizer": tokenizer})()
    lm = dspy.LM("local/stripping", engine=LocalEngine(stripping))
    with dspy.context(lm=lm, adapter=ForcedExtractionAdapter()):
        with pytest.raises(GreaterError, match="drops the end of a continued assistant message"):
            dspy.Predict("question -> answer")(question="Hi?")


# -- values ------------------------------------------------------------------------------------
def test_mapping_to_closed_sets():
    assert map_to_choice("True.", [True, False]) is True
    assert map_to_choice("no, it is not", [True, False]) is False
    assert map_to_choice("(B) Apple", ["(A)", "(B)", "(C)"]) == "(B)"
    assert map_to_choice("The answer is invalid", ["valid", "invalid"]) == "invalid"
    assert map_to_choice("Yes, though no one saw it", [True, False]) is True  # the first word
    for unmappable in ("{answer}", "it is either valid or invalid", ""):
        with pytest.raises(ValueError):
            map_to_choice(unmappable, ["valid", "invalid"])
    assert parse_field("42 apples", int) == 42
    assert parse_field('"(A)"', Literal["(A)", "(B)"], constrained=True) == "(A)"
    assert parse_field("true", bool, constrained=True) is True


# -- on the real model -------------------------------------------------------------------------
def test_parse_rate_and_types_on_bbh_through_evaluate(lm, bbh):
    devset = [ex for examples in bbh.values() for ex in examples]
    assert len(devset) >= 24
    program = dspy.ChainOfThought("question -> answer")
    with dspy.context(lm=lm, adapter=ForcedExtractionAdapter()):
        result = dspy.Evaluate(
            devset=devset,
            metric=dspy_greater.bbh_metric,
            num_threads=16,
            max_errors=1,
            display_progress=False,
        )(program)
    answers = [prediction.answer for _, prediction, _ in result.results]
    parsed = sum(isinstance(a, str) for a in answers) / len(answers)
    assert parsed >= 0.99, answers
    assert all(isinstance(p.reasoning, str) for _, p, _ in result.results)


def test_constrained_closed_sets_always_give_a_value_of_the_type(lm, bbh):
    examples = bbh.get("sports_understanding") or pytest.skip("no sports_understanding")
    program = dspy.ChainOfThought(Sports)
    with dspy.context(lm=lm, adapter=ForcedExtractionAdapter(closed_sets="constrain")):
        answers = [program(question=ex.question).answer for ex in examples]
    assert all(a in ("yes", "no") for a in answers), answers
    calls = lm.history[-2:]
    assert calls[-1]["kwargs"]["response_format"]["json_schema"]["schema"] == {
        "enum": ["yes", "no"]
    }


def test_unmappable_answers_are_wrong_answers_not_errors(lm, bbh):
    examples = bbh.get("sports_understanding") or pytest.skip("no sports_understanding")
    program = dspy.ChainOfThought(Sports)
    with dspy.context(lm=lm, adapter=ForcedExtractionAdapter(closed_sets="map")):
        result = dspy.Evaluate(
            devset=examples,
            metric=dspy_greater.bbh_metric,
            num_threads=8,
            max_errors=1,
            display_progress=False,
        )(program)
    answers = [prediction.answer for _, prediction, _ in result.results]
    assert len(answers) == len(examples)  # max_errors=1 did not stop the evaluation
    assert all(a in ("yes", "no", None) for a in answers)
    unmapped = [ex for ex, a in zip(examples, answers, strict=True) if a is None]
    if not unmapped:
        pytest.skip("SmolLM2 named a label every time; nothing unmappable to check")
    with dspy.context(
        lm=lm, adapter=ForcedExtractionAdapter(closed_sets="map", on_unparsable="raise")
    ):
        with pytest.raises(AdapterParseError, match="answer"):  # DSPy's own failure path
            program(question=unmapped[0].question)


def test_several_typed_fields_are_written_in_order(lm):
    class Review(dspy.Signature):
        """Read the sentence and describe it."""

        sentence: str = dspy.InputField()
        summary: str = dspy.OutputField()
        positive: bool = dspy.OutputField()
        stars: int = dspy.OutputField()

    calls = len(lm.history)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with dspy.context(lm=lm, adapter=ForcedExtractionAdapter()):
            prediction = dspy.Predict(Review)(sentence="I loved this film, five stars.")
    # Called as DSPy 3.4's own adapters call the LM: no deprecated path warns.
    assert not [
        w for w in caught if issubclass(w.category, DeprecationWarning) and "DSPy" in str(w.message)
    ], [str(w.message) for w in caught]
    new = lm.history[calls:]
    assert [m["messages"][-1]["content"].rsplit("\n", 2)[-2] for m in new] == [
        "[[ ## summary ## ]]",
        "[[ ## positive ## ]]",
        "[[ ## stars ## ]]",
    ]
    assert isinstance(prediction.summary, str)
    assert isinstance(prediction.positive, bool)  # constrained: always a bool
    assert prediction.stars is None or isinstance(prediction.stars, int)


def test_acall_writes_the_same_fields_as_a_call(lm):
    """``await predictor.acall(...)`` under the adapter takes the same forced passes as a call
    (greedy, so the same values) through the LM's asynchronous engine."""
    program = dspy.Predict("sentence -> summary, positive: bool")
    sentence = "The soup was cold and the waiter rude."
    with dspy.context(lm=lm, adapter=ForcedExtractionAdapter()):
        called = program(sentence=sentence)
        calls = len(lm.history)
        awaited = asyncio.run(program.acall(sentence=sentence))
    assert len(lm.history) - calls == 2  # one forced pass per output field
    assert (awaited.summary, awaited.positive) == (called.summary, called.positive)
    assert isinstance(awaited.positive, bool)


def test_several_completions_are_sampled_one_pass_each(lm):
    """COPRO asks a predictor for n proposals at a temperature: each is its own forced pass,
    sampled, and with DSPy's cache on they are still n different samples (own rollout ids)."""
    cached = local_lm(reasoner=lm.engine.reasoner, max_tokens=24)  # DSPy's cache on
    proposer = dspy.Predict("task -> instruction", n=4, temperature=1.5)
    with dspy.context(lm=cached, adapter=ForcedExtractionAdapter()):
        result = proposer(task=f"Write an instruction for a quiz about {id(cached)}.")
        single = dspy.Predict("task -> instruction")(task="Name a colour.")
    assert len(result.completions.instruction) == 4
    assert len(set(result.completions.instruction)) >= 3, result.completions.instruction
    assert len(single.completions.instruction) == 1


def test_header_like_text_in_a_value_does_not_confuse_it(lm):
    question = "What does '[[ ## answer ## ]]' mean in a DSPy prompt?"
    demos = [
        dspy.Example(
            question="Say [[ ## answer ## ]] twice.",
            reasoning="Copy it: [[ ## answer ## ]] [[ ## answer ## ]]",
            answer="ok",
        )
    ]
    program = dspy.ChainOfThought("question -> answer")
    program.predict.demos = demos
    with dspy.context(lm=lm, adapter=ForcedExtractionAdapter()):
        prediction = program(question=question)
    assert isinstance(prediction.answer, str) and "[[ ##" not in prediction.answer
    assert "[[ ##" not in prediction.reasoning


def test_a_module_with_two_predictors(lm, bbh):
    class TwoSteps(dspy.Module):
        def __init__(self):
            super().__init__()
            self.restate = dspy.Predict("question -> restated_question")
            self.answer = dspy.ChainOfThought("question, restated_question -> answer")

        def forward(self, question):
            restated = self.restate(question=question).restated_question
            return self.answer(question=question, restated_question=restated)

    devset = next(iter(bbh.values()))[:6]
    with dspy.context(lm=lm, adapter=ForcedExtractionAdapter()):
        result = dspy.Evaluate(
            devset=devset,
            metric=dspy_greater.bbh_metric,
            num_threads=6,
            max_errors=1,
            display_progress=False,
        )(TwoSteps())
    assert all(isinstance(p.answer, str) for _, p, _ in result.results)


# -- bad input ---------------------------------------------------------------------------------
def test_a_signature_without_output_fields_is_refused(lm):
    signature = dspy.Signature({"question": (str, dspy.InputField())}, "Nothing to produce.")
    with pytest.raises(ValueError, match="no output fields"):
        ForcedExtractionAdapter()(lm, {}, signature, [], {"question": "q"})


def test_a_transformers_engine_cannot_constrain(smollm2):
    hf_lm = local_lm(reasoner=HFReasoner(smollm2), max_tokens=4, cache=False)
    assert not ForcedExtractionAdapter().constrains(hf_lm)  # "auto" maps instead
    with dspy.context(lm=hf_lm, adapter=ForcedExtractionAdapter(closed_sets="constrain")):
        with pytest.raises(GreaterError, match="vLLM backend"):
            dspy.Predict(Sports)(question="Is Messi a soccer player?")


class _RefusingServer(http.server.BaseHTTPRequestHandler):
    """An OpenAI-style endpoint that, like OpenAI's, refuses vLLM's continuation keys."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        bad = [k for k in ("continue_final_message", "add_generation_prompt") if k in body]
        status, payload = (
            (
                400,
                {
                    "error": {
                        "message": f"Unrecognized request argument supplied: {bad[0]}",
                        "type": "invalid_request_error",
                    }
                },
            )
            if bad
            else (
                200,
                {
                    "id": "x",
                    "object": "chat.completion",
                    "model": "m",
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": "ok"},
                        }
                    ],
                },
            )
        )
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_an_lm_that_cannot_continue_is_named_with_the_lms_that_can():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RefusingServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        lm = dspy.LM(
            "openai/m",
            api_base=f"http://127.0.0.1:{server.server_port}/v1",
            api_key="none",
            num_retries=0,
            cache=False,
        )
        with dspy.context(lm=lm, adapter=ForcedExtractionAdapter()):
            with pytest.raises(CannotContinue, match="local_lm.*vllm serve"):
                dspy.Predict("question -> answer")(question="Hi?")
    finally:
        server.shutdown()


# -- the gradient pass's view ------------------------------------------------------------------
def test_the_renderer_scores_exactly_what_the_adapter_generates(smollm2, bbh):
    """Generate with the adapter on transformers, render the same example for the gradient
    model with the generated answer as gold: the teacher-forced argmax must reproduce it."""
    reasoner = HFReasoner(smollm2, dtype="float32")
    hf_lm = local_lm(reasoner=reasoner, max_tokens=24, cache=False)
    adapter = ForcedExtractionAdapter(instructions="after_inputs")
    program = dspy.ChainOfThought("question -> answer")
    prompt = "Think step by step and answer."
    program.predict.signature = program.predict.signature.with_instructions(prompt)
    examples = next(iter(bbh.values()))[:3]
    with dspy.context(lm=hf_lm, adapter=adapter):
        predictions = [program(question=ex.question) for ex in examples]
    # Each prediction made two calls (reasoning, answer): the answer call's raw completion.
    raw_answers = [entry["outputs"][0] for entry in hf_lm.history[1::2]]
    renderer = AdapterRenderer(program.predict.signature, reasoner.tokenizer, adapter)
    model = HFGradientModel(smollm2, dtype="float32")
    rendered = []
    for example, prediction, raw in zip(examples, predictions, raw_answers, strict=True):
        if not prediction.answer or raw != prediction.answer:  # the gold must be the raw tokens
            continue
        generated = dspy.Example(question=example.question, answer=prediction.answer)
        prompt_ids = renderer.encode_prompt(prompt, generated)
        reasoning_ids = reasoner.tokenizer(prediction.reasoning, add_special_tokens=False)[
            "input_ids"
        ]
        item = renderer.render(prompt_ids, generated, reasoning_ids)
        assert reasoner.tokenizer.decode(item.prompt_ids) == prompt
        assert reasoner.tokenizer.decode(item.ids[item.reasoning]).strip() == prediction.reasoning
        assert reasoner.tokenizer.decode(item.ids[item.extractor]).strip() == "[[ ## answer ## ]]"
        # The context is what the adapter's answer call sent, token for token.
        messages = adapter.continuation(
            program.predict.signature,
            [],
            {"question": example.question},
            {"reasoning": prediction.reasoning},
            "answer",
        )
        [sent] = chat_prompt_ids(reasoner.tokenizer, [messages], continue_final_message=True)
        assert list(item.ids[: item.answer.start]) == sent
        rendered.append(item)
    assert rendered, "SmolLM2 wrote no answer at all"
    assert all(score.correct for score in model.score(rendered))


@pytest.mark.parametrize(
    "labels, gold", [(("True", "False"), "False"), (("(A)", "(B)", "(C)"), "(B)")]
)
def test_a_constrained_answer_is_scored_on_the_tokens_that_tell_the_choices_apart(
    smollm2, labels, gold
):
    """Constrained to a closed set the model writes one choice's JSON (``"False"``); its
    quote is forced, so the loss must not read it (it cost ~4 nats on every Qwen example)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    signature = dspy.ChainOfThought(
        dspy.Signature(
            {"question": (str, dspy.InputField()), "answer": (Literal[labels], dspy.OutputField())}
        )  # type: ignore[valid-type]
    ).predict.signature
    example = dspy.Example(question="not True is", answer=gold)
    reasoning = tokenizer("So it is false.", add_special_tokens=False)["input_ids"]

    def rendered(constrained: bool):
        renderer = AdapterRenderer(
            signature, tokenizer, ForcedExtractionAdapter(), constrained=constrained
        )
        return renderer, renderer.render(
            renderer.encode_prompt("Think.", example), example, reasoning
        )

    renderer, item = rendered(True)
    forced, answer = renderer.decisive_answer(example)
    full = renderer.answer_ids(example)
    assert tokenizer.decode(full) == json.dumps(gold) and len(answer) < len(full)
    assert list(item.ids[item.answer]) == list(answer) and gold.strip("()") in tokenizer.decode(
        answer
    )
    assert (
        tokenizer.decode(item.ids[item.extractor])
        .strip()
        .endswith(tokenizer.decode(forced).strip())
    )
    others = [renderer.decisive_answer(example.copy(answer=c))[1] for c in labels if c != gold]
    assert answer not in others  # what is scored still tells the choices apart
    _, plain = rendered(False)  # mapped, not constrained: the answer as written, whole
    assert tokenizer.decode(plain.ids[plain.answer]).strip() == gold


def test_the_renderer_needs_a_reasoning_and_an_answer_field(smollm2):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    with pytest.raises(SlotError, match="ChainOfThought"):
        AdapterRenderer(
            dspy.Predict("question -> answer").signature, tokenizer, ForcedExtractionAdapter()
        )


@pytest.mark.parametrize("instructions", ["system", "after_inputs"])
def test_the_search_runs_on_the_adapter_renderer(tiny_model, instructions):
    """Mechanics on the tiny model: the search reasons by continuing the forced reasoning
    header, stops at the next header, and optimizes the signature's instructions."""
    from dspy_greater.search import run_greater

    model = HFGradientModel(tiny_model)
    signature = dspy.ChainOfThought("question -> answer").predict.signature
    renderer = AdapterRenderer(
        signature, model.tokenizer, ForcedExtractionAdapter(instructions=instructions)
    )
    examples = even_questions(4)
    config = tiny_config()
    result = run_greater(
        examples,
        initial_prompt="Think step by step.",
        config=config,
        renderer=renderer,
        reasoner=HFReasoner(tiny_model, batch_size=4),
        gradient_model=model,
        progress=False,
    )
    assert len(result.history) == 2
    assert result.initial_prompt == "Think step by step."
    # The best prompt renders as the signature's instructions, wherever they are placed.
    item = renderer.render(result.best_ids, examples[0])
    assert renderer.decode_prompt(item.prompt_ids) == result.best_prompt
    assert result.best_prompt in str(renderer.messages(result.best_ids, examples[0]))


def test_a_number_with_a_fraction_is_not_read_as_an_int():
    assert parse_field("3", int) == 3 and parse_field("about 12 apples", int) == 12
    assert parse_field("3.0", int) == 3 and parse_field("3.7", float) == 3.7
    with pytest.raises(ValueError, match="not an integer"):
        parse_field("3.7", int)
    with pytest.raises(ValueError, match="not an integer"):
        parse_field("The answer is 2.5 apples", int)
