"""The run directory: checkpoints, generations, resuming, and refusing to resume the wrong run."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from dspy_greater.adapters.hf_gradient import HFGradientModel
from dspy_greater.adapters.hf_reasoner import HFReasoner
from dspy_greater.chat_template import ChatTemplateRenderer
from dspy_greater.errors import GreaterError
from dspy_greater.rundir import GenerationStore, RunDir, RunDirMismatch
from dspy_greater.search import run_greater
from tests.helpers import tiny_config
from tests.test_search import TINY_EXAMPLES

CONFIG = tiny_config(steps=3, num_subsets=3, seed=2)


def test_generations_survive_a_reopen_and_a_torn_last_line(tmp_path):
    store = GenerationStore(tmp_path / "g.jsonl")
    store[((1, 2), 0)] = (5, 6)
    store[((1, 3), 1)] = ()
    store.close()
    with (tmp_path / "g.jsonl").open("a") as stream:
        stream.write('{"prompt": [9], "exa')  # killed mid-write
    again = GenerationStore(tmp_path / "g.jsonl")
    assert dict(again) == {((1, 2), 0): (5, 6), ((1, 3), 1): ()}
    again.close()


def test_a_changed_setting_is_named_by_its_dotted_key_alone():
    from dspy_greater.rundir import changed_settings

    old = {"search": {"steps": 1, "top_k": 10}, "metric": {"function": "m"}, "rounds": 1}
    new = {"search": {"steps": 2, "top_k": 10}, "metric": {"function": "m"}, "rounds": 1}
    assert changed_settings(old, new) == ["search.steps: 1 -> 2"]
    assert changed_settings({"a": 1}, {"b": 2}) == ["a: 1 -> None", "b: None -> 2"]


def test_resuming_needs_the_same_config_and_schema(tmp_path):
    RunDir(tmp_path / "run", {"steps": 3, "task": "a"}, resume=False).close()
    with pytest.raises(GreaterError, match="already holds a run.*resume=True"):
        RunDir(tmp_path / "run", {"steps": 3, "task": "a"}, resume=False)
    with pytest.raises(RunDirMismatch, match=r"\(steps: 3 -> 5\)"):
        RunDir(tmp_path / "run", {"steps": 5, "task": "a"}, resume=True)
    data = json.loads((tmp_path / "run" / "run.json").read_text())
    (tmp_path / "run" / "run.json").write_text(json.dumps({**data, "schema": 0}))
    with pytest.raises(RunDirMismatch, match="schema 0"):
        RunDir(tmp_path / "run", {"steps": 3, "task": "a"}, resume=True)


def test_a_killed_run_resumes_from_its_directory_to_the_same_result(tiny_model, tmp_path):
    model = HFGradientModel(tiny_model)
    engines = dict(
        renderer=ChatTemplateRenderer(model.tokenizer),
        reasoner=HFReasoner(tiny_model, batch_size=4),
        gradient_model=model,
        config=CONFIG,
        progress=False,
        initial_prompt="Think step by step",
    )
    whole = run_greater(TINY_EXAMPLES, **engines)

    class Killed(Exception):
        pass

    def kill_in_step_two(record):
        if record.step == 1:
            raise Killed  # after step 1's record, before its checkpoint is read back

    run = RunDir(tmp_path / "run", asdict(CONFIG), resume=False)
    with pytest.raises(Killed):
        run_greater(
            TINY_EXAMPLES,
            **engines,
            reasoning_cache=run.generations,
            on_checkpoint=run.save_state,
            on_step=kill_in_step_two,
        )
    run.close()

    run = RunDir(tmp_path / "run", asdict(CONFIG), resume=True)
    state = run.state()
    assert state is not None and state.steps_done == 2 and len(run.generations) > 0
    resumed = run_greater(
        TINY_EXAMPLES,
        **engines,
        reasoning_cache=run.generations,
        on_checkpoint=run.save_state,
        state=state,
    )
    run.close()
    strip_time = lambda r: [{**asdict(h), "seconds": None} for h in r.history]  # noqa: E731
    assert strip_time(resumed) == strip_time(whole)
    assert resumed.best_ids == whole.best_ids and resumed.top_prompts == whole.top_prompts
