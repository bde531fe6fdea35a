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
        "import dspy_greater.adapters\n"
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
