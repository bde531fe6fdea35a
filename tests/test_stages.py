"""Multi-stage programs: targets from passing traces, every stage optimized, resume, errors.

Traces need outputs to target, so those tests run the embedded model (the tiny random model
writes empty values); the metrics read the example, not the prediction, to decide which runs
pass, so the passing set is known. Errors and fallbacks run on the tiny model."""

from __future__ import annotations

import json

import dspy
import pytest

from dspy_greater import ForcedExtractionAdapter, GReaTer
from dspy_greater.adapters.hf_reasoner import HFReasoner
from dspy_greater.errors import GreaterError
from dspy_greater.lm import local_lm
from dspy_greater.targets import stage_examples, trace_program
from tests.helpers import even_questions, tiny_config

CONFIG = tiny_config(num_examples=4)
# On the embedded model, one thread (below): as small as still shows both stages move.
SMOL_CONFIG = tiny_config(num_examples=2, shortlist=2, max_reasoning_tokens=8)
DATA = even_questions(12)


class DraftThenAnswer(dspy.Module):
    def __init__(self):
        super().__init__()
        self.draft = dspy.ChainOfThought(dspy.Signature("question -> notes", "Take notes."))
        self.answer = dspy.ChainOfThought(
            dspy.Signature("question, notes -> answer", "Answer from the notes.")
        )

    def forward(self, question):
        notes = self.draft(question=question).notes
        return self.answer(question=question, notes=notes)


class AskTwice(dspy.Module):
    def __init__(self):
        super().__init__()
        self.ask = dspy.ChainOfThought("question -> answer")

    def forward(self, question):
        first = self.ask(question=question).answer
        return self.ask(question=f"{question} (first thought: {first})")


def even_only(example, prediction, trace=None):
    """Passes exactly the examples whose answer is 'yes'."""
    return example.answer == "yes"


@pytest.fixture(scope="module")
def tiny_lm(tiny_model):
    return local_lm(reasoner=HFReasoner(tiny_model, batch_size=8), max_tokens=6, cache=False)


@pytest.fixture(scope="module")
def smol_lm(vllm_reasoner):
    return local_lm(reasoner=vllm_reasoner, max_tokens=16, cache=False)


def _optimizer(**overrides):
    settings = dict(metric=even_only, config=CONFIG, progress=False, num_threads=4)
    return GReaTer(**{**settings, **overrides})


def test_targets_come_from_passing_runs_and_every_call(smol_lm):
    program = AskTwice()
    with dspy.context(lm=smol_lm, adapter=ForcedExtractionAdapter()):
        runs = trace_program(
            program, DATA[:6], even_only, threshold=None, num_threads=4, max_errors=0
        )
    assert [row["example"].answer for row in runs.passing] == ["yes"] * 3
    examples = stage_examples("ask.predict", program.ask.predict, runs)
    assert len(examples) == 6  # both calls of each passing run
    questions = [ex.question for ex in examples]
    assert {q for q in questions if "first thought" not in q} == {
        "Is 0 even?",
        "Is 2 even?",
        "Is 4 even?",
    }
    assert all(set(ex.inputs().keys()) == {"question"} for ex in examples)


def test_a_two_stage_program_compiles_every_stage_and_resumes_in_the_second(smol_lm, tmp_path):
    student = DraftThenAnswer()
    student.answer.predict.demos = [
        dspy.Example(
            question="Is 8 even?", notes="8 = 2 * 4.", reasoning="It divides.", answer="yes"
        )
    ]
    before = student.dump_state()
    # one thread: vLLM on CPU is not batch-invariant, and the runs are compared
    one_thread = dict(num_threads=1, config=SMOL_CONFIG, validate_every_step=False)
    train, val = DATA[:6], DATA[8:10]
    with dspy.context(lm=smol_lm):
        compiled = _optimizer(**one_thread).compile(
            student, trainset=train, valset=val, run_dir=tmp_path / "whole"
        )
    assert student.dump_state() == before
    run = compiled.greater_run
    assert [s.predictor for s in run.stages] == ["draft.predict", "answer.predict"]
    for stage, predictor in zip(
        run.stages, (compiled.draft.predict, compiled.answer.predict), strict=True
    ):
        assert stage.skipped is None and stage.targets == "traces" and stage.examples == 3
        assert len(stage.history) == SMOL_CONFIG.steps
        assert predictor.signature.instructions == stage.instructions
        # the validation-best, unless the evidence guard kept the start
        assert stage.validation[stage.instructions] == max(stage.validation.values()) or (
            stage.kept_start and stage.instructions == stage.start_instructions
        )
        assert stage.start_instructions in stage.validation
    assert any(r.prompt_after != s.start_instructions for s in run.stages for r in s.history)
    state = compiled.dump_state()
    for name in ("draft.predict", "answer.predict"):
        state[name]["signature"]["instructions"] = before[name]["signature"]["instructions"]
    assert state == before  # only the instructions changed
    with pytest.raises(AttributeError, match="run.stages"):
        run.instructions  # noqa: B018 (ambiguous for two stages)
    compiled.save(tmp_path / "program.json")
    loaded = DraftThenAnswer()
    loaded.load(tmp_path / "program.json")
    assert loaded.dump_state() == compiled.dump_state()
    stored = json.loads((tmp_path / "whole" / "run.json").read_text())
    assert stored["result"]["instructions"] == {
        "draft.predict": run.stages[0].instructions,
        "answer.predict": run.stages[1].instructions,
    }
    targets = json.loads(
        (tmp_path / "whole" / "stages" / "0-draft.predict" / "targets.json").read_text()
    )
    assert sorted(row["fields"]["question"] for row in targets["examples"]) == [
        "Is 0 even?",
        "Is 2 even?",
        "Is 4 even?",
    ]

    # Stopped in the first step of the second stage, then resumed: the same result.
    class Stop(Exception):
        pass

    steps = []

    def stop_in_second_stage(record):
        steps.append(record)
        if len(steps) == SMOL_CONFIG.steps + 1:
            raise Stop

    with dspy.context(lm=smol_lm):
        with pytest.raises(Stop):
            _optimizer(on_step=stop_in_second_stage, **one_thread).compile(
                DraftThenAnswer(), trainset=train, valset=val, run_dir=tmp_path / "cut"
            )
        resumed = _optimizer(**one_thread).compile(
            DraftThenAnswer(), trainset=train, valset=val, run_dir=tmp_path / "cut", resume=True
        )
    for a, b in zip(run.stages, resumed.greater_run.stages, strict=True):
        assert a.instructions == b.instructions
        assert [r.prompt_after for r in a.history] == [r.prompt_after for r in b.history]
        assert a.validation == b.validation


class AnswerDeclaredFirst(DraftThenAnswer):
    """The same pipeline with its predictors declared the other way round: the last declared
    predictor does not write the program's answer."""

    def __init__(self):
        dspy.Module.__init__(self)
        self.answer = dspy.ChainOfThought(
            dspy.Signature("question, notes -> answer", "Answer from the notes.")
        )
        self.draft = dspy.ChainOfThought(dspy.Signature("question -> notes", "Take notes."))


@pytest.mark.parametrize(
    "pipeline, order",
    [(DraftThenAnswer, ["draft", "answer"]), (AnswerDeclaredFirst, ["answer", "draft"])],
)
def test_too_few_passing_calls_fall_back_to_labels_or_skip(pipeline, order, tiny_lm, tmp_path):
    """The label fallback goes to the predictor that writes the program's answer, in whichever
    order the predictors are declared."""

    def only_zero(example, prediction, trace=None):
        return example.question == "Is 0 even?"

    with dspy.context(lm=tiny_lm):
        compiled = _optimizer(metric=only_zero).compile(
            pipeline(), trainset=DATA[:8], valset=DATA[8:], run_dir=tmp_path / "run"
        )
    stages = {stage.predictor: stage for stage in compiled.greater_run.stages}
    assert list(stages) == [f"{name}.predict" for name in order]
    draft, answer = stages["draft.predict"], stages["answer.predict"]
    # the tiny model writes empty notes: nothing to target, so the draft stage is skipped
    assert draft.skipped and "passing calls in 1 passing runs" in draft.skipped
    assert not draft.history
    assert draft.instructions == "Take notes."
    assert answer.skipped is None and answer.targets == "labels" and answer.examples == 8


def test_multi_stage_bad_input_is_named(tiny_lm, tmp_path):
    def never(example, prediction, trace=None):
        return False

    class Crashes(DraftThenAnswer):
        def forward(self, question):
            if question in ("Is 1 even?", "Is 3 even?"):
                raise RuntimeError("no odd numbers here")
            return super().forward(question)

    class NoReasoning(dspy.Module):
        def __init__(self):
            super().__init__()
            self.first = dspy.ChainOfThought("question -> notes")
            self.second = dspy.Predict("question, notes -> answer")

    with dspy.context(lm=tiny_lm):
        with pytest.raises(GreaterError, match=r"No run of the program passed.*score 0\.000"):
            _optimizer(metric=never).compile(
                DraftThenAnswer(), trainset=DATA[:8], valset=DATA[8:], run_dir=tmp_path / "never"
            )
        with pytest.raises(ValueError, match=r"'second.*Wrap it in dspy.ChainOfThought"):
            _optimizer().compile(NoReasoning(), trainset=DATA[:8], valset=DATA[8:])
        with pytest.raises(ValueError, match="several.*predictor=NAME"):
            _optimizer(initial_instructions="Be brief.").compile(
                DraftThenAnswer(), trainset=DATA[:8]
            )
        with pytest.raises(ValueError, match="with_inputs"):
            _optimizer().compile(DraftThenAnswer(), trainset=[dspy.Example(question="q")] * 4)
        with pytest.raises(GreaterError, match=r"raised on 2 of 8.*max_errors=1"):
            _optimizer(max_errors=1).compile(
                Crashes(), trainset=DATA[:8], valset=DATA[8:], run_dir=tmp_path / "crash"
            )
        # under the threshold a crash is one failed example, not the end of the run
        compiled = _optimizer(max_errors=5, metric=lambda ex, pred, trace=None: True).compile(
            Crashes(), trainset=DATA[:8], valset=DATA[8:], run_dir=tmp_path / "ok"
        )
    answer = compiled.greater_run.stages[1]
    assert answer.targets == "labels" and answer.examples == 6  # the 6 runs that did not crash


def test_predictors_sharing_one_signature_object_change_apart(tiny_lm, tmp_path):
    class Shared(dspy.Module):
        def __init__(self):
            super().__init__()
            signature = dspy.Signature("question -> answer", "Answer.")
            self.first = dspy.ChainOfThought(signature)
            self.second = dspy.ChainOfThought(signature)

        def forward(self, question):
            first = self.first(question=question).answer
            return self.second(question=f"{question} (first answer: {first})")

    with dspy.context(lm=tiny_lm):
        compiled = _optimizer(
            metric=lambda ex, pred, trace=None: True,
            initial_instructions={"second.predict": "Think, then answer."},
        ).compile(Shared(), trainset=DATA[:8], valset=DATA[8:], run_dir=tmp_path / "run")
    first, second = compiled.greater_run.stages
    assert first.skipped  # the tiny model writes empty answers: no traced target
    assert second.targets == "labels" and len(second.history) == CONFIG.steps
    assert compiled.first.predict.signature.instructions == "Answer."
    assert compiled.second.predict.signature.instructions == second.instructions
    assert second.start_instructions == "Think, then answer."


def test_each_predictor_reasons_on_its_own_lm(tiny_lm, smol_lm, smollm2, tiny_model, tmp_path):
    """The draft predictor has an LM of its own (the tiny model); the answer predictor has
    none, so it runs, and is optimized, on the configured one (the embedded model)."""
    student = DraftThenAnswer()
    student.draft.predict.lm = tiny_lm
    with dspy.context(lm=smol_lm):
        compiled = _optimizer(num_threads=1, config=SMOL_CONFIG, validate_every_step=False).compile(
            student, trainset=DATA[:6], valset=DATA[8:10], run_dir=tmp_path / "run"
        )
    draft, answer = compiled.greater_run.stages
    assert draft.model == str(tiny_model) and draft.skipped  # the tiny model writes no notes
    assert answer.model == str(smollm2)
    assert answer.skipped is None and answer.targets == "traces" and answer.examples == 3
    assert len(answer.history) == SMOL_CONFIG.steps
    assert compiled.greater_run.model == {
        "draft.predict": str(tiny_model),
        "answer.predict": str(smollm2),
    }
