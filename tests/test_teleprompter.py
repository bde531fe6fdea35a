"""The GReaTer teleprompter: mechanics on the tiny model, errors, resume, the metric's say."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import dspy
import pytest

from dspy_greater import GReaTer, bbh_metric
from dspy_greater.adapters.hf_reasoner import HFReasoner
from dspy_greater.adapters.same_model import ModelMismatch
from dspy_greater.errors import GreaterError
from dspy_greater.forced_extraction import ForcedExtractionAdapter
from dspy_greater.lm import local_lm, local_reasoner
from dspy_greater.search import GreaterConfig
from tests.helpers import even_questions, tiny_config

TINY_CONFIG = tiny_config(num_examples=4)
DATA = even_questions(9)


@pytest.fixture(scope="module")
def tiny_lm(tiny_model):
    return local_lm(reasoner=HFReasoner(tiny_model, batch_size=8), max_tokens=6, cache=False)


def _optimizer(**overrides):
    settings = dict(
        metric=bbh_metric,
        config=TINY_CONFIG,
        progress=False,
        initial_instructions="Think step by step.",
        num_threads=4,
    )
    return GReaTer(**{**settings, **overrides})


def test_compile_returns_a_copy_with_only_the_instructions_changed(tiny_lm, tmp_path):
    docstring = "Think step by step.\nAnswer yes or no."  # searched as one line
    student = dspy.ChainOfThought(dspy.Signature("question -> answer", docstring))
    demo = dspy.Example(question="Is 10 even?", reasoning="10 = 2 * 5.", answer="yes")
    student.predict.demos = [demo]
    before = student.dump_state()
    with dspy.context(lm=tiny_lm):
        compiled = _optimizer(initial_instructions=None).compile(
            student, trainset=DATA[:6], valset=DATA[6:], run_dir=tmp_path / "run"
        )
    assert student.dump_state() == before  # the student is untouched
    run = compiled.greater_run
    assert run.start_instructions == docstring
    assert run.history[0].prompt_before == "Think step by step. Answer yes or no."
    assert {docstring, run.history[0].prompt_before} <= set(run.validation)
    assert compiled.predict.signature.instructions == run.instructions
    assert run.start_instructions in run.validation and run.instructions in run.validation
    assert run.validation[run.instructions] >= run.validation[run.start_instructions]
    assert len(run.history) == TINY_CONFIG.steps and len(run.train_scores) == TINY_CONFIG.steps
    assert any(r.prompt_after != run.start_instructions for r in run.history)
    assert compiled.predict.demos == [demo]
    state = compiled.dump_state()
    state["predict"]["signature"]["instructions"] = before["predict"]["signature"]["instructions"]
    assert state == before  # nothing else changed
    stored = json.loads((tmp_path / "run" / "run.json").read_text())
    assert stored["schema"] == 2 and stored["result"]["instructions"] == {
        "predict": run.instructions
    }
    assert (tmp_path / "run" / "scores.png").stat().st_size > 1000
    stage = tmp_path / "run" / "stages" / "0-predict"
    assert (stage / "generations.jsonl").read_text().count("\n") >= 4


def test_the_valset_scores_the_start_and_the_best_few_unless_asked_for_every_step(
    tiny_lm, tmp_path
):
    config = GreaterConfig(**{**TINY_CONFIG.__dict__, "steps": 3, "keep_top": 1})
    runs = {}
    for every in (False, True):
        with dspy.context(lm=tiny_lm):  # one thread: the two runs' chains are compared
            runs[every] = (
                _optimizer(config=config, num_threads=1, validate_every_step=every)
                .compile(
                    dspy.ChainOfThought("question -> answer"),
                    trainset=DATA[:6],
                    valset=DATA[6:],
                    run_dir=tmp_path / str(every),
                )
                .greater_run.stages[0]
            )
    few, each = runs[False], runs[True]
    [(best, _, _)] = few.search.top_prompts  # keep_top=1: the best by training score
    assert set(few.validation) == {few.start_instructions, best}
    assert few.validation_per_step == [few.validation.get(r.prompt_after) for r in few.history]
    assert None not in each.validation_per_step  # every step's prompt scored on the valset
    assert set(each.validation) == set(few.validation)  # the final choice is among the same
    # validating every step costs more, and changes nothing the compile chooses
    assert [r.prompt_after for r in few.history] == [r.prompt_after for r in each.history]
    assert few.instructions == each.instructions


def test_the_metric_selection_weighs_the_answer_loss_when_asked(tiny_lm, tmp_path):
    scores = {}
    for weight in (0.0, 2.0):
        config = GreaterConfig(
            **{**TINY_CONFIG.__dict__, "steps": 1, "selection_loss_weight": weight}
        )
        with dspy.context(lm=tiny_lm):
            stage = (
                _optimizer(config=config)
                .compile(
                    dspy.ChainOfThought("question -> answer"),
                    trainset=DATA[:6],
                    valset=DATA[6:],
                    run_dir=tmp_path / str(weight),
                )
                .greater_run.stages[0]
            )
        scores[weight] = stage.search.initial_score
    assert scores[0.0].answer_loss == 0.0  # the paper's score: not computed
    weighed = scores[2.0]
    assert weighed.answer_loss > 0
    assert weighed.value == pytest.approx(
        weighed.mistake_rate + 0.02 * weighed.prompt_nll + 2.0 * weighed.answer_loss
    )
    assert weighed.mistake_rate == scores[0.0].mistake_rate  # the metric's part is the same


def test_a_stopped_compile_resumes_to_the_same_result(tiny_lm, tmp_path):
    with dspy.context(lm=tiny_lm):
        whole = _optimizer(config=GreaterConfig(**{**TINY_CONFIG.__dict__, "steps": 3})).compile(
            dspy.ChainOfThought("question -> answer"),
            trainset=DATA[:6],
            valset=DATA[6:],
            run_dir=tmp_path / "whole",
        )

        class Stop(Exception):
            pass

        def stop(record):
            if record.step == 1:
                raise Stop

        config = GreaterConfig(**{**TINY_CONFIG.__dict__, "steps": 3})
        with pytest.raises(Stop):
            _optimizer(config=config, on_step=stop).compile(
                dspy.ChainOfThought("question -> answer"),
                trainset=DATA[:6],
                valset=DATA[6:],
                run_dir=tmp_path / "stopped",
            )
        resumed = _optimizer(config=config).compile(
            dspy.ChainOfThought("question -> answer"),
            trainset=DATA[:6],
            valset=DATA[6:],
            run_dir=tmp_path / "stopped",
            resume=True,
        )
    assert resumed.greater_run.instructions == whole.greater_run.instructions
    assert [r.prompt_after for r in resumed.greater_run.history] == [
        r.prompt_after for r in whole.greater_run.history
    ]
    assert resumed.greater_run.validation == whole.greater_run.validation


# -- on the embedded model ------------------------------------------------------------------
SMOL_CONFIG = GreaterConfig(
    steps=1, num_examples=4, top_k=6, subset_size=2, num_subsets=2, max_reasoning_tokens=24
)


@pytest.fixture(scope="module")
def smol_lm(vllm_reasoner):
    return local_lm(reasoner=vllm_reasoner, max_tokens=24, cache=False)


@pytest.fixture(scope="module")
def sports():
    import dspy_greater

    data = dspy_greater.load_bbh("sports_understanding")
    return data[:4], data[4:8]


def test_a_real_compile_saves_loads_and_reproduces_its_validation_score(smol_lm, sports, tmp_path):
    train, val = sports
    optimizer = GReaTer(metric=bbh_metric, config=SMOL_CONFIG, progress=False, num_threads=1)
    with dspy.context(lm=smol_lm):
        compiled = optimizer.compile(
            dspy.ChainOfThought("question -> answer"),
            trainset=train,
            valset=val,
            run_dir=tmp_path / "run",
        )
    run = compiled.greater_run
    assert run.start_instructions == "Given the fields `question`, produce the fields `answer`."
    assert {r.prompt_after for r in run.history} - {run.start_instructions}  # it moved
    stage = run.only_stage  # the validation-best, unless the evidence guard kept the start
    assert run.validation[run.instructions] == max(run.validation.values()) or (
        stage.kept_start and run.instructions == run.start_instructions
    )
    compiled.save(tmp_path / "program.json")
    loaded = dspy.ChainOfThought("question -> answer")
    loaded.load(tmp_path / "program.json")
    assert loaded.predict.signature.instructions == run.instructions
    with dspy.context(lm=smol_lm, adapter=ForcedExtractionAdapter()):
        result = dspy.Evaluate(
            devset=val, metric=bbh_metric, num_threads=1, display_progress=False
        )(loaded)
    assert result.score / 100 == pytest.approx(run.validation[run.instructions])


def test_the_metric_decides_the_selection(smol_lm, sports, tmp_path):
    def longer(example, prediction, trace=None):  # scaled to outweigh the readability term
        return len(prediction.reasoning)

    def shorter(example, prediction, trace=None):
        return -len(prediction.reasoning)

    chosen = {}
    for metric in (longer, shorter):
        optimizer = GReaTer(
            metric=metric, config=SMOL_CONFIG, progress=False, validate_every_step=False
        )
        with dspy.context(lm=smol_lm):
            compiled = optimizer.compile(
                dspy.ChainOfThought("question -> answer"),
                trainset=sports[0],
                valset=sports[1],
                run_dir=tmp_path / metric.__name__,
            )
        history = compiled.greater_run.history
        chosen[metric.__name__] = [r.selected for r in history]
        for record in history:
            assert record.scores[record.selected] == min(record.scores.values())
    assert chosen["longer"] != chosen["shorter"]


# -- bad input ---------------------------------------------------------------------------------
def test_bad_input_is_named(tiny_lm, tmp_path):
    program = dspy.ChainOfThought("question -> answer")
    with dspy.context(lm=tiny_lm):
        with pytest.raises(ValueError, match="trainset is empty"):
            _optimizer().compile(program, trainset=[])
        with pytest.raises(ValueError, match=r"lacks the input field\(s\) \['question'\]"):
            _optimizer().compile(program, trainset=[dspy.Example(q="x", answer="y")] * 4)
        with pytest.raises(ValueError, match="has no 'answer'"):
            _optimizer().compile(program, trainset=[dspy.Example(question="x")] * 4)
        with pytest.raises(ValueError, match="no predictors"):
            _optimizer().compile(dspy.Module(), trainset=DATA)

        with pytest.raises(ValueError, match="No predictor named 'nope'"):
            _optimizer(predictor="nope").compile(program, trainset=DATA)
        with pytest.raises(ValueError, match="Wrap it in dspy.ChainOfThought"):
            _optimizer().compile(dspy.Predict("question -> answer"), trainset=DATA)
        with pytest.raises(ValueError, match="at least 3 examples"):
            _optimizer().compile(program, trainset=DATA[:2])
    with dspy.context(lm=None):
        with pytest.raises(GreaterError, match="No LM"):
            _optimizer().compile(program, trainset=DATA)
    remote = dspy.LM("openai/some-model", api_base="http://127.0.0.1:9/v1", api_key="x")
    with dspy.context(lm=remote):
        with pytest.raises(GreaterError, match="not a local engine.*task_lm"):
            _optimizer().compile(program, trainset=DATA)
    with pytest.raises(TypeError, match="needs a metric"):
        GReaTer(metric=None)


def test_a_gradient_model_other_than_the_reasoning_lm_is_refused(tiny_lm, smollm2, tmp_path):
    with dspy.context(lm=tiny_lm), pytest.raises(ModelMismatch, match="not the same weights"):
        _optimizer(gradient_model=smollm2).compile(
            dspy.ChainOfThought("question -> answer"),
            trainset=DATA[:6],
            valset=DATA[6:],
            run_dir=tmp_path / "run",
        )


@pytest.mark.parametrize(
    "max_errors, message",
    [
        (2, r"metric failed on [34] examples in this run.*max_errors=2"),  # 4 threads
        (100, r"Every one of the 4 training examples failed.*KeyError"),  # whatever max_errors
    ],
    ids=["past-max-errors", "on-every-example"],
)
def test_a_metric_that_keeps_raising_stops_the_run(tiny_lm, tmp_path, max_errors, message):
    def broken(example, prediction, trace=None):
        raise KeyError("gold")

    with dspy.context(lm=tiny_lm):
        with pytest.raises(GreaterError, match=message):
            _optimizer(metric=broken, max_errors=max_errors).compile(
                dspy.ChainOfThought("question -> answer"),
                trainset=DATA[:6],
                valset=DATA[6:],
                run_dir=tmp_path / "run",
            )


def _raises_on_one(example, prediction, trace=None):
    if example.question == "Is 1 even?":
        raise KeyError("gold")
    return bbh_metric(example, prediction, trace)


def test_max_errors_counts_failed_examples_over_the_run(tiny_lm, tmp_path):
    """An example the metric raises on is one failure however often the search scores it; more
    failed examples than max_errors stop the run, in whichever evaluation they come."""
    with dspy.context(lm=tiny_lm):
        compiled = _optimizer(metric=_raises_on_one, max_errors=1).compile(
            dspy.ChainOfThought("question -> answer"),
            trainset=DATA[:6],
            valset=DATA[6:],
            run_dir=tmp_path / "run",
        )
        assert len(compiled.greater_run.history) == TINY_CONFIG.steps
        with pytest.raises(GreaterError, match=r"failed on 1 examples.*max_errors=0.*Is 1 even"):
            _optimizer(metric=_raises_on_one, max_errors=0).compile(
                dspy.ChainOfThought("question -> answer"),
                trainset=DATA[:6],
                valset=DATA[6:],
                run_dir=tmp_path / "strict",
            )


def test_a_metric_failing_on_every_validation_example_stops_the_run(tiny_lm, tmp_path):
    """Validation runs the program itself: if it raises on every example there is no score to
    choose by, whatever max_errors says."""

    def metric(example, prediction, trace=None):
        if trace is None and example in DATA[6:]:
            raise ValueError("no gold for validation")
        return bbh_metric(example, prediction, trace)

    with dspy.context(lm=tiny_lm):
        with pytest.raises(GreaterError, match=r"Every one of the 3 validation examples failed"):
            _optimizer(metric=metric, max_errors=100).compile(
                dspy.ChainOfThought("question -> answer"),
                trainset=DATA[:6],
                valset=DATA[6:],
                run_dir=tmp_path / "run",
            )


def test_one_predictor_over_two_rounds_reads_as_its_last_round(tiny_lm, tmp_path):
    with dspy.context(lm=tiny_lm):
        compiled = _optimizer(rounds=2).compile(
            dspy.ChainOfThought("question -> answer"),
            trainset=DATA[:6],
            valset=DATA[6:],
            run_dir=tmp_path / "run",
        )
    run = compiled.greater_run
    first, last = run.stages
    assert (first.round, last.round) == (0, 1)
    assert last.start_instructions == first.instructions
    assert run.instructions == last.instructions == compiled.predict.signature.instructions
    assert run.history == last.history and run.validation == last.validation


class ThresholdMetric:
    """A metric object: its repr holds a memory address, which differs in every process."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def __call__(self, example, prediction, trace=None):
        return float(bbh_metric(example, prediction, trace)) >= self.threshold


def scaled_metric(example, prediction, trace=None, scale=1.0):
    return scale * float(bbh_metric(example, prediction, trace))


def test_the_same_metric_resumes_and_another_is_refused(tiny_lm, tmp_path):
    from functools import partial

    from dspy_greater.rundir import RunDirMismatch

    student = dspy.ChainOfThought("question -> answer")
    with dspy.context(lm=tiny_lm):
        for metric, other in (
            (ThresholdMetric(1.0), ThresholdMetric(0.5)),
            (partial(scaled_metric, scale=1.0), partial(scaled_metric, scale=2.0)),
        ):
            run_dir = tmp_path / type(metric).__name__
            done = _optimizer(metric=metric).compile(
                student, trainset=DATA[:6], valset=DATA[6:], run_dir=run_dir
            )
            again = _optimizer(
                metric=copy.deepcopy(metric)
            ).compile(  # another object, equal
                student, trainset=DATA[:6], valset=DATA[6:], run_dir=run_dir, resume=True
            )
            assert again.greater_run.instructions == done.greater_run.instructions
            with pytest.raises(RunDirMismatch, match="metric"):
                _optimizer(metric=other).compile(
                    student, trainset=DATA[:6], valset=DATA[6:], run_dir=run_dir, resume=True
                )


def test_a_metric_is_identified_alike_in_every_process():
    """What the run identity stores for a partial or a metric object is the same in a new
    process (where every memory address differs), and differs for other arguments."""
    script = (
        "import json, functools, sys; sys.path.insert(0, {root!r});"
        "from dspy_greater.identity import metric_identity;"
        "from tests.test_teleprompter import ThresholdMetric, scaled_metric;"
        "print(json.dumps([metric_identity(ThresholdMetric(0.5)),"
        " metric_identity(functools.partial(scaled_metric, scale=2.0))]))"
    )
    root = str(Path(__file__).resolve().parents[1])
    runs = [
        subprocess.run(
            [sys.executable, "-c", script.format(root=root)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        for seed in ("1", "2")
    ]
    first, second = (json.loads(run.stdout.strip().splitlines()[-1]) for run in runs)
    assert first == second
    assert "0x" not in json.dumps(first)
    from functools import partial

    from dspy_greater.identity import metric_identity

    assert metric_identity(partial(scaled_metric, scale=3.0)) != first[1]
    assert metric_identity(ThresholdMetric(0.7)) != first[0]


def test_the_plot_leaves_matplotlib_as_the_user_set_it(tmp_path):
    import matplotlib
    import matplotlib.pyplot as plt

    from dspy_greater.report import StageRun, plot_scores

    backend = matplotlib.get_backend()
    matplotlib.use("pdf")  # say, a notebook's choice
    try:
        stage = StageRun(
            "predict", 0, "Start.", "Start.", {"Start.": 0.5}, [0.5, 0.75], [0.5, None], "labels", 4
        )
        plot_scores(tmp_path / "scores.png", [stage])
        assert (tmp_path / "scores.png").stat().st_size > 1000
        assert matplotlib.get_backend() == "pdf"
        assert plt.get_fignums() == []
    finally:
        matplotlib.use(backend)


def test_the_plot_marks_every_validated_prompt_and_the_chosen_one():
    from dspy_greater.report import StageRun, plot_points

    # the start validated at 0.44 at every step; a prompt no step ended on chosen at 0.50
    validation = {"Start.": 0.44, "Start now.": 0.50, "Go.": 0.31}
    stage = StageRun(
        "predict", 0, "Start.", "Start now.", validation, [0.5, 0.6], [0.44, 0.44], "labels", 4
    )
    points = plot_points([stage])
    assert points.train == [(1, 0.5), (2, 0.6)]
    assert points.steps_validated == [(1, 0.44), (2, 0.44)]
    assert points.chosen == [(3, 0.50, "Start now.")]  # one step after the last
    assert sorted(points.candidates) == [(3, 0.31), (3, 0.44)]
    assert points.start == 0.44

    second = StageRun("answer", 0, "A.", "A.", {"A.": 0.7}, [0.7], [None], "traces", 4)
    points = plot_points([stage, second])
    assert points.chosen[1] == (5, 0.7, "A.")  # the second stage starts after the first's choice
    assert points.stage_starts == [(0.5, "predict"), (3.5, "answer")]


def test_a_run_prints_a_short_summary():
    from dspy_greater.report import GReaTerRun, StageRun

    stage = StageRun(
        "predict",
        0,
        "Start.",
        "Start now.",
        {"Start.": 0.44, "Start now.": 0.5},
        [0.5],
        [None],
        "labels",
        4,
        model="x" * 5000,
    )
    run = GReaTerRun(Path("/runs/r"), "system", "x" * 5000, False, 16, False, [stage], 12.3)
    text = str(run)
    assert text.splitlines() == [
        "GReaTerRun (/runs/r)",
        "  predict: 'Start.' -> 'Start now.'",
        "    validation 0.440 -> 0.500 (n=16), 0 steps",
        "  12 s",
    ]


class _BuggyLogprobs(HFReasoner):
    def prompt_logprobs(self, ids):
        return self.no_such_attribute  # a bug inside the same-model check


def test_a_bug_in_the_same_model_check_surfaces(tiny_model, tmp_path):
    lm = local_lm(reasoner=_BuggyLogprobs(tiny_model), max_tokens=6, cache=False)
    with dspy.context(lm=lm), pytest.raises(AttributeError, match="no_such_attribute"):
        _optimizer().compile(
            dspy.ChainOfThought("question -> answer"),
            trainset=DATA[:6],
            valset=DATA[6:],
            run_dir=tmp_path / "run",
        )


def _stop_at_the_engines(monkeypatch):
    """Fail the test if compile gets as far as starting an engine."""
    import dspy_greater.teleprompter as module

    def engines(*args, **kwargs):
        raise AssertionError("the engines started before the mistake was caught")

    monkeypatch.setattr(module, "stage_engines", engines)


def _examples(answers):
    return [
        dspy.Example(question=f"q{i}", answer=a).with_inputs("question")
        for i, a in enumerate(answers)
    ]


@pytest.mark.parametrize(
    "metric, message",
    [
        (lambda example: True, r"cannot be called as metric\(example, prediction, trace\)"),
        (lambda example, prediction, trace=None: None, "returned None for example 0"),
        (lambda example, prediction, trace=None: "yes", r"returned 'yes' \(str\).*not a score"),
    ],
    ids=["signature", "none", "string"],
)
def test_a_broken_metric_stops_compile_before_any_engine(monkeypatch, metric, message):
    _stop_at_the_engines(monkeypatch)
    program = dspy.ChainOfThought("question -> answer")
    data = _examples(["yes", "no"] * 3)
    with pytest.raises(GreaterError, match=message):
        GReaTer(metric=metric).compile(program, trainset=data[:4], valset=data[4:])


def test_labels_of_another_type_than_the_field_stop_compile_before_any_engine(monkeypatch):
    from typing import Literal

    _stop_at_the_engines(monkeypatch)
    metric = bbh_metric
    numbers = _examples([1, 0, 1, 0, 1, 0])
    with pytest.raises(
        GreaterError, match=r"answer=1 \(int\), but the output field 'answer' is str"
    ):
        GReaTer(metric=metric).compile(
            dspy.ChainOfThought("question -> answer"), trainset=numbers[:4], valset=numbers[4:]
        )
    closed = dspy.ChainOfThought(
        dspy.Signature("question -> answer").with_updated_fields(
            "answer", type_=Literal["yes", "no"]
        )
    )
    maybe = _examples(["yes", "no", "yes", "maybe", "no", "yes"])
    with pytest.raises(GreaterError, match=r"Example 3 of the trainset has answer='maybe'"):
        GReaTer(metric=metric).compile(closed, trainset=maybe[:4], valset=maybe[4:])


def test_an_example_too_long_for_the_context_fails_before_the_search(tiny_lm, tmp_path):
    """Named with the example, its tokens, the budget that pushed it over and the model's own
    limit (transformers: no setting raises it), before the search's first generation."""
    long = dspy.Example(question="word " * 2_500 + "Is 4 even?", answer="yes")
    valset = [*DATA[6:], long.with_inputs("question")]
    reasoner = local_reasoner(tiny_lm)
    before = reasoner.generated_sequences
    with dspy.context(lm=tiny_lm):
        with pytest.raises(GreaterError, match=r"Example 3 of the valset is too long") as error:
            _optimizer().compile(
                dspy.ChainOfThought("question -> answer"),
                trainset=DATA[:6],
                valset=valset,
                run_dir=tmp_path / "run",
            )
    assert "of the 2,048 the context holds" in str(error.value)
    assert "the context is the model's own limit" in str(error.value)
    assert reasoner.generated_sequences == before


def test_the_evidence_guard_weighs_the_paired_gain_on_the_validation_questions():
    """The start stays unless the chosen prompt's paired gain over it clears min_evidence
    paired SEs: two questions turned right and one wrong of eight is not enough at 1 SE; four
    turned right, none wrong, is."""
    from types import SimpleNamespace

    from dspy_greater.stages import _with_evidence

    scores = {
        "start": [1, 0, 0, 0, 1, 0, 0, 1],
        "mixed": [1, 1, 1, 0, 1, 0, 0, 0],  # +2 -1: +0.125 ± 0.21
        "clear": [1, 1, 1, 1, 1, 1, 0, 1],  # +4
    }
    validation = SimpleNamespace(per_question=lambda predictor, text: scores[text])

    def choose(best, min_evidence=1.0):
        run = SimpleNamespace(validation=validation, min_evidence=min_evidence)
        return _with_evidence(run, "predict", "start", best)

    chosen, change = choose("mixed")
    assert chosen == "start" and (change.gained, change.lost) == (2, 1)
    assert choose("mixed", min_evidence=0.0)[0] == "mixed"  # 0: any gain
    chosen, change = choose("clear")
    assert chosen == "clear" and change.difference == 0.5
    assert choose("clear", min_evidence=10.0)[0] == "start"
    assert choose("start") == ("start", None)


def test_compile_records_per_question_validation_scores_and_the_evidence(tiny_lm, tmp_path):
    with dspy.context(lm=tiny_lm):
        for min_evidence in (0.0, 100.0):
            folder = tmp_path / f"run-{min_evidence}"
            run = (
                _optimizer(min_evidence=min_evidence)
                .compile(
                    dspy.ChainOfThought("question -> answer"),
                    trainset=DATA[:6],
                    valset=DATA[6:],
                    run_dir=folder,
                )
                .greater_run
            )
            stored = json.loads((folder / "validation.json").read_text())
            assert all(len(scores) == 3 and set(scores) <= {0.0, 1.0} for scores in stored.values())
            stage = run.only_stage
            best_mean = max(stage.validation.values())
            if min_evidence == 100.0:  # nothing clears 100 SE: the start stays
                assert stage.instructions == stage.start_instructions
                beaten = best_mean > stage.validation[stage.start_instructions]
                assert stage.kept_start is beaten and (stage.evidence is not None) is beaten
                if beaten:
                    assert "kept the start: not enough evidence" in str(run)
            elif stage.instructions != stage.start_instructions:
                assert stage.evidence.difference > 0 and "paired change" in str(run)
