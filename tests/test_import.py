import subprocess
import sys


def run_python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def test_import_leaves_heavy_libraries_unloaded():
    out = run_python(
        "import sys, dspy_greater\n"
        "print(sorted(m for m in ('torch', 'vllm', 'transformers') if m in sys.modules))"
    )
    assert out == "[]"


def test_data_and_model_path_helpers_do_not_load_torch():
    # Loading BBH data and locating the cache are everyday calls; they must stay light too.
    out = run_python(
        "import sys, dspy_greater\n"
        "dspy_greater.load_bbh('boolean_expressions'); dspy_greater.cache_dir()\n"
        "import dspy_greater.engines\n"
        "print('torch' in sys.modules, 'vllm' in sys.modules)"
    )
    assert out == "False False"


def test_unknown_attribute_is_an_attribute_error():
    import dspy_greater

    try:
        dspy_greater.no_such_thing  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_the_search_and_the_engines_load_no_dspy():
    # The algorithm and the engines stand alone; only the bridge to DSPy imports it.
    out = run_python(
        "import sys\n"
        "import dspy_greater.search, dspy_greater.engines, dspy_greater.engines.base\n"
        "import dspy_greater.engines.hf, dspy_greater.engines.vllm_engine\n"
        "import dspy_greater.engines.vllm_server, dspy_greater.engines.same_model\n"
        "print(sorted(m for m in sys.modules if m == 'dspy' or m.startswith('dspy.')))"
    )
    assert out == "[]"


def test_moved_modules_keep_working_with_a_deprecation_warning():
    import warnings

    import dspy_greater.lm

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from dspy_greater.adapters.lm import LocalEngine, local_lm
        from dspy_greater.extract import ForcedExtractionAdapter
    assert local_lm is dspy_greater.lm.local_lm and LocalEngine is dspy_greater.lm.LocalEngine
    assert ForcedExtractionAdapter is dspy_greater.ForcedExtractionAdapter
    messages = [str(w.message) for w in caught if w.category is DeprecationWarning]
    assert any("dspy_greater.adapters.lm is deprecated" in m for m in messages)
    assert any("dspy_greater.extract is deprecated" in m for m in messages)
