import subprocess
import sys


def run_python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def test_import_leaves_heavy_libraries_unloaded():
    out = run_python(
        "import sys, dspy_greater, dspy_greater.models\n"
        "print(sorted(m for m in ('torch', 'vllm', 'transformers') if m in sys.modules))"
    )
    assert out == "[]"


def test_data_and_model_path_helpers_do_not_load_torch():
    # Loading BBH data and locating the cache are everyday calls; they must stay light too.
    out = run_python(
        "import sys, dspy_greater, dspy_greater.models\n"
        "dspy_greater.load_bbh('boolean_expressions'); dspy_greater.models.cache_dir()\n"
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


def test_the_search_and_the_engines_load_no_dspy():
    # The algorithm and the engines stand alone; only the modules that face DSPy import it.
    out = run_python(
        "import sys\n"
        "import dspy_greater.search, dspy_greater.adapters, dspy_greater.adapters.base\n"
        "import dspy_greater.adapters.hf_loading, dspy_greater.adapters.hf_reasoner\n"
        "import dspy_greater.adapters.hf_gradient, dspy_greater.adapters.vllm_engine\n"
        "import dspy_greater.adapters.vllm_server, dspy_greater.adapters.same_model\n"
        "print(sorted(m for m in sys.modules if m == 'dspy' or m.startswith('dspy.')))"
    )
    assert out == "[]"


def test_the_public_names_are_the_users_api_and_all_resolve():
    import dspy_greater

    assert dspy_greater.__all__ == ["__version__", *dspy_greater._LAZY]
    for name in dspy_greater.__all__:
        assert getattr(dspy_greater, name) is not None
    # statistics helpers are in their module, not the top level
    assert "standard_error" not in dspy_greater.__all__


def test_every_import_in_the_package_resolves():
    """Every ``from X import Y`` of ours, at the top of a module or inside a function (the lazy
    ones only run late, in a command or an engine), names a module and a name that exist."""
    import ast
    import importlib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    files = [*(root / "dspy_greater").rglob("*.py"), *(root / "adapters").glob("*.py")]
    checked = 0
    for file in files:
        relative = file.relative_to(root)
        parts = list(relative.with_suffix("").parts)
        if parts[0] == "adapters":
            parts = ["dspy_greater", *parts]
        package = parts[:-1]  # a module's package; an __init__'s is its own folder's
        for node in ast.walk(ast.parse(file.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").startswith("dspy_greater"):
                module = node.module
            else:
                continue
            imported = importlib.import_module(module)
            for alias in node.names:
                if not hasattr(imported, alias.name):
                    importlib.import_module(f"{module}.{alias.name}")  # a submodule
            checked += 1
    assert checked > 100
