"""DSPy LMs over the local engines: real DSPy modules, threads batched, no copies of the model."""

from __future__ import annotations

import _thread
import copy
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import dspy
import pytest
from dspy.utils.exceptions import AdapterParseError

from dspy_greater.adapters import make_reasoner
from dspy_greater.adapters.base import chat_prompt_ids
from dspy_greater.adapters.hf_reasoner import HFReasoner
from dspy_greater.errors import GreaterError
from dspy_greater.lm import LocalEngine, cancel_local_calls, local_lm


@pytest.fixture
def ctrl_c_raises():
    """Python's own Ctrl-C handler for the test. A background job (nohup, `make test &`) starts
    Python with SIGINT ignored, and then ``_thread.interrupt_main`` does nothing."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="module")
def lm(vllm_reasoner):
    return local_lm(reasoner=vllm_reasoner, max_tokens=16, cache=False)


def test_a_dspy_program_runs_on_the_local_lm(lm):
    calls = len(lm.history)
    with dspy.context(lm=lm):
        try:
            dspy.Predict("question -> answer")(question="What is the capital of France?")
        except AdapterParseError:
            pass  # SmolLM2 ignores ChatAdapter's format: the forced-extraction adapter's job
    new = lm.history[calls:]
    assert new, "the program never reached the local engine"
    assert "[[ ## question ## ]]" in new[0]["messages"][-1]["content"]
    assert new[0]["usage"]["prompt_tokens"] > 20 and new[0]["usage"]["completion_tokens"] >= 1
    assert isinstance(new[0]["outputs"][0], str)


def test_continuing_an_assistant_message_through_dspy(lm, vllm_reasoner):
    messages = [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is"},
    ]
    [text] = lm(messages=messages)
    [direct] = vllm_reasoner.chat([messages], max_new_tokens=16, continue_final_message=True)
    assert text == direct.text and "Paris" in text


def test_deep_copies_share_the_engine(lm):
    program = dspy.Predict("question -> answer")
    program.lm = lm
    clone = copy.deepcopy(program)
    assert clone.lm.engine is lm.engine
    assert clone.lm.engine.reasoner is lm.engine.reasoner


def test_concurrent_calls_are_batched(vllm_reasoner):
    engine_lm = local_lm(reasoner=vllm_reasoner, max_tokens=8, cache=False)
    engine: LocalEngine = engine_lm.engine
    questions = [[{"role": "user", "content": f"What is {i} plus {i}?"}] for i in range(16)]
    with ThreadPoolExecutor(16) as pool:  # as dspy.Evaluate / dspy.Parallel call an LM
        answers = list(pool.map(lambda m: engine_lm(messages=m)[0], questions))
    assert len(answers) == 16 and all(isinstance(a, str) for a in answers)
    assert max(engine.batch_sizes) > 1, engine.batch_sizes  # requests in flight per model step
    assert max(engine.batch_sizes) <= 16


def _counting(lm, start: str, max_tokens: int) -> str:
    """The model continues ``start`` (a count it goes on with) for ``max_tokens`` tokens."""
    messages = [
        {"role": "user", "content": "Count from 1 to 200, separated by commas."},
        {"role": "assistant", "content": start},
    ]
    [text] = lm(messages=messages, max_tokens=max_tokens)
    return text


def test_a_late_call_joins_the_requests_in_flight(vllm_reasoner):
    """Continuous batching on vLLM: a call that arrives while another is generating joins it at
    the next model step and can finish first; it does not wait for the running call to end."""
    lm = local_lm(reasoner=vllm_reasoner, cache=False)
    engine: LocalEngine = lm.engine
    finished: list[str] = []

    def count(start: str, max_tokens: int) -> str:
        text = _counting(lm, start, max_tokens)
        finished.append(start)
        return text

    with ThreadPoolExecutor(2) as pool:
        long = pool.submit(count, "1, 2, 3,", 96)
        deadline = time.monotonic() + 120
        while len(engine.batch_sizes) < 3:  # until the long call is generating
            assert not long.done(), "the long call ended before the short one was sent"
            assert time.monotonic() < deadline, "the long call never reached the model"
            time.sleep(0.01)
        short = pool.submit(count, "10, 11, 12,", 4)
        assert short.result(timeout=120) and long.result(timeout=600)
    assert finished == ["10, 11, 12,", "1, 2, 3,"]
    assert max(engine.batch_sizes) == 2, engine.batch_sizes
    # the late call's answer is the model's own: as the same prompt alone gives it
    assert short.result() == _counting(lm, "10, 11, 12,", 4)


def _until_generating(engine, count: int = 1) -> None:
    """Wait until ``count`` requests are in vLLM's engine."""
    deadline = time.monotonic() + 120
    while engine.get_num_unfinished_requests() < count:
        assert time.monotonic() < deadline, "no request reached the engine"
        time.sleep(0.01)


def test_callers_on_one_engine_get_their_own_answers(vllm_reasoner):
    """Two LMs and a direct ``generate`` on one vLLM engine at once (vLLM's ``LLM.generate``
    would take the others' finished requests): each gets its own answer, as alone."""
    first, second = (local_lm(reasoner=vllm_reasoner, cache=False) for _ in range(2))
    prompt = [{"role": "user", "content": "Name three colours."}]
    [ids] = chat_prompt_ids(vllm_reasoner.tokenizer, [prompt], continue_final_message=False)
    with ThreadPoolExecutor(2) as pool:
        long = pool.submit(_counting, first, "1, 2, 3,", 96)
        _until_generating(vllm_reasoner.llm.llm_engine)
        short = pool.submit(_counting, second, "10, 11, 12,", 8)
        [direct] = vllm_reasoner.generate([ids], max_new_tokens=8)
        answers = short.result(timeout=120), long.result(timeout=600)
    assert answers == (_counting(second, "10, 11, 12,", 8), _counting(first, "1, 2, 3,", 96))
    assert direct == vllm_reasoner.generate([ids], max_new_tokens=8)[0]


def test_an_interrupted_generate_leaves_no_request_running(
    vllm_reasoner, monkeypatch, ctrl_c_raises
):
    """Ctrl-C during a generation (e.g. in a notebook) aborts its requests: none runs on, and
    the next call gets only its own completions."""
    engine = vllm_reasoner.llm.llm_engine
    count = [{"role": "user", "content": "Count from 1 to 500, separated by commas."}]
    [ids] = chat_prompt_ids(vllm_reasoner.tokenizer, [count], continue_final_message=False)
    step, interrupted = engine.step, []

    def step_then_ctrl_c() -> list:
        # Ctrl-C lands in the main thread while all four requests are generating.
        outputs = step()
        if not interrupted and engine.get_num_unfinished_requests() == 4:
            interrupted.append(True)
            _thread.interrupt_main()
        return outputs

    monkeypatch.setattr(engine, "step", step_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        vllm_reasoner.generate([ids] * 4, max_new_tokens=1024)
    monkeypatch.undo()
    assert interrupted
    assert engine.get_num_unfinished_requests() == 0
    [again] = vllm_reasoner.generate([ids], max_new_tokens=4)
    assert len(again.token_ids) == 4


def test_cancel_ends_the_calls_of_an_interrupted_evaluate(vllm_reasoner, ctrl_c_raises):
    """Ctrl-C during ``dspy.Evaluate`` on a local LM: DSPy starts no more examples, and
    ``cancel_local_calls`` ends those generating. Without it they run on in DSPy's threads, and
    Python waits for those threads before it exits (the CLI hung for minutes)."""
    lm = local_lm(reasoner=vllm_reasoner, cache=False)
    started: list[str] = []
    ended: list[str] = []

    class Count(dspy.Module):
        def forward(self, start: str) -> dspy.Prediction:
            started.append(start)
            try:
                return dspy.Prediction(text=_counting(lm, start, 1024))
            finally:
                ended.append(start)

    examples = [
        dspy.Example(start=f"{i}, {i + 1}, {i + 2},").with_inputs("start") for i in range(8)
    ]
    engine = vllm_reasoner.llm.llm_engine

    def interrupt() -> None:
        _until_generating(engine, len(examples))  # every call is in: none can come after
        _thread.interrupt_main()

    threading.Thread(target=interrupt, daemon=True).start()
    evaluate = dspy.Evaluate(
        devset=examples, metric=lambda *_: 1.0, num_threads=len(examples), display_progress=False
    )
    with pytest.raises(KeyboardInterrupt):
        evaluate(Count())
    cancel_local_calls()
    deadline = time.monotonic() + 60
    while len(ended) < len(started):
        assert time.monotonic() < deadline, f"{len(started) - len(ended)} calls still running"
        time.sleep(0.05)
    assert len(started) == len(examples)
    assert not lm.history, "a call ran to its end: it was not cancelled"
    assert engine.get_num_unfinished_requests() == 0
    assert _counting(lm, "1, 2, 3,", 4)  # the engine answers the next call


def test_continuous_batching_only_where_the_reasoner_can(tiny_model):
    reasoner = HFReasoner(tiny_model)
    assert LocalEngine(reasoner).continuous is False  # transformers: gathered batches
    with pytest.raises(GreaterError, match="continuously"):
        LocalEngine(reasoner, continuous=True)


def test_a_refused_prompt_fails_only_its_caller(vllm_reasoner):
    """A prompt too long for the context fails its own call with the reason; the calls in
    flight beside it answer."""
    lm = local_lm(reasoner=vllm_reasoner, cache=False)
    too_long = [{"role": "user", "content": "word " * vllm_reasoner.max_model_len}]
    fine = [{"role": "user", "content": "What is 2 plus 2?"}]
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(lm, messages=m, max_tokens=8) for m in (fine, too_long, fine)]
        errors = [future.exception(timeout=120) for future in futures]
    assert errors[0] is None and errors[2] is None
    assert "context length" in str(errors[1]), errors


def test_hf_fallback_is_chosen_by_name(tiny_model):
    reasoner = make_reasoner(tiny_model, backend="hf")
    assert isinstance(reasoner, HFReasoner)
    with pytest.raises(ValueError, match="backend"):
        make_reasoner(tiny_model, backend="tpu")


def test_sampling_when_asked_greedy_otherwise(lm):
    """Proposal-writing optimizers (COPRO, MIPROv2, GEPA) ask for n samples at a temperature:
    each candidate is its own sampled call; at temperature 0 they are all the same."""
    messages = [{"role": "user", "content": "Write one creative instruction for a quiz."}]
    sampled = lm(messages=messages, temperature=1.5, n=4)
    greedy = lm(messages=messages, temperature=0.0, n=3)
    assert len(sampled) == 4 and len(set(sampled)) >= 3, sampled
    assert len(greedy) == 3 and len(set(greedy)) == 1


def test_hf_reasoner_samples_at_a_temperature(tiny_model):
    reasoner = HFReasoner(tiny_model)
    prompt = [reasoner.tokenizer("Hello there")["input_ids"]] * 4
    sampled = {c.token_ids for c in reasoner.generate(prompt, max_new_tokens=8, temperature=2.0)}
    greedy = {c.token_ids for c in reasoner.generate(prompt, max_new_tokens=8)}
    assert len(sampled) >= 3 and len(greedy) == 1


class _DropsOne(HFReasoner):
    """A real reasoner whose batches come back one completion short."""

    def generate(self, prompts, **kwargs):
        return super().generate(prompts, **kwargs)[:-1]


class _Raises(HFReasoner):
    def __init__(self, *args, error: BaseException, **kwargs):
        super().__init__(*args, **kwargs)
        self.error = error

    def generate(self, prompts, **kwargs):
        raise self.error


def _ask_concurrently(lm, count: int) -> list[BaseException | None]:
    """Call ``lm`` from ``count`` threads at once; what each raised (None for an answer). A
    caller that hangs fails the test instead of blocking it."""
    questions = [[{"role": "user", "content": f"What is {i} plus {i}?"}] for i in range(count)]
    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(lm, messages=m) for m in questions]
        return [future.exception(timeout=60) for future in futures]


def test_a_batch_short_of_completions_fails_every_caller(tiny_model):
    lm = local_lm(reasoner=_DropsOne(tiny_model), max_tokens=4, cache=False)
    errors = _ask_concurrently(lm, 6)
    assert all(error is not None and "completions for" in str(error) for error in errors), errors


def test_an_error_in_the_model_reaches_every_caller_and_the_engine_goes_on(tiny_model):
    reasoner = _Raises(tiny_model, error=RuntimeError("out of memory"))
    lm = local_lm(reasoner=reasoner, max_tokens=4, cache=False)
    errors = _ask_concurrently(lm, 4)
    assert all("out of memory" in str(error) for error in errors), errors
    reasoner.generate = HFReasoner.generate.__get__(reasoner)  # the model recovers
    assert _ask_concurrently(lm, 2) == [None, None]


def test_a_stopped_worker_fails_its_callers_instead_of_hanging_them(tiny_model):
    lm = local_lm(reasoner=_Raises(tiny_model, error=SystemExit(3)), max_tokens=4, cache=False)
    lm.engine.poll_seconds = 0.05
    errors = _ask_concurrently(lm, 3)
    assert all("worker thread stopped" in str(error) for error in errors), errors
    lm.engine._worker.join(timeout=10)
    assert not lm.engine._worker.is_alive()
    later = _ask_concurrently(lm, 2)  # sent after it stopped: nobody will serve them
    assert all("worker thread stopped" in str(error) for error in later), later


def _other_weights(source, destination):
    """A copy of the tiny model's folder with other weights (one tensor changed)."""
    import shutil

    import torch
    from transformers import LlamaForCausalLM

    shutil.copytree(source, destination)
    model = LlamaForCausalLM.from_pretrained(source)
    with torch.no_grad():
        model.lm_head.weight.mul_(-1.0)
    model.save_pretrained(destination)
    return destination


def test_the_cache_keeps_models_apart(tiny_model, tmp_path):
    """DSPy caches by the LM's model string: two folders of one name, or one folder in two
    dtypes, are other models, and must not be served each other's answers."""
    import shutil

    first = shutil.copytree(tiny_model, tmp_path / "a" / "final")
    second = _other_weights(tiny_model, tmp_path / "b" / "final")
    messages = [{"role": "user", "content": "Name a colour."}]

    def generated(reasoner) -> int:
        before = reasoner.generated_sequences
        local_lm(reasoner=reasoner, max_tokens=4)(messages=messages)
        return reasoner.generated_sequences - before

    assert generated(HFReasoner(first)) == 1
    assert generated(HFReasoner(first)) == 0  # the same model: answered from the cache
    assert generated(HFReasoner(second)) == 1  # same folder name, other weights
    assert generated(HFReasoner(first, dtype="bfloat16")) == 1
    assert local_lm(reasoner=HFReasoner(first)).model != local_lm(reasoner=HFReasoner(second)).model
