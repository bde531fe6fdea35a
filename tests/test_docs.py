"""What the README and the docs show a user works: their Python compiles and names what exists,
their commands name real scripts and options, and the README stays a short product page."""

from __future__ import annotations

import ast
import importlib
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [
    ROOT / "README.md",
    ROOT / "benchmarks" / "README.md",
    *sorted((ROOT / "docs").rglob("*.md")),
]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _blocks(kind: str) -> list[tuple[Path, str]]:
    return [
        (page, body)
        for page in PAGES
        for lang, body in FENCE.findall(page.read_text())
        if lang == kind
    ]


INLINE = re.compile(r"`((?:python benchmarks/|dspy-greater )[^`]+)`")


def _commands() -> list[tuple[Path, list[str]]]:
    """Every shell command in the pages' bash blocks (continuation lines joined) and in inline
    code that starts a benchmark or the CLI."""
    found = []
    for page, body in _blocks("bash"):
        for line in body.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                found.append((page, shlex.split(line)))
    for page in PAGES:
        found += [(page, shlex.split(code)) for code in INLINE.findall(page.read_text())]
    return found


def test_the_readme_is_a_short_product_page():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    assert text.index("```python") < 4000  # the quick start is on the first screen
    assert not re.search(r"\bissue \d+\b", text, re.I)  # no work-item numbers


@pytest.mark.parametrize("page, code", _blocks("python"), ids=lambda v: getattr(v, "name", ""))
def test_python_in_the_docs_compiles_and_names_what_exists(page, code):
    tree = ast.parse(code, filename=str(page))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dspy_greater"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{_name(page)}: {node.module}.{alias.name}"
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "dspy_greater"
        ):
            import dspy_greater

            assert hasattr(dspy_greater, node.attr), f"{_name(page)}: dspy_greater.{node.attr}"


def _script_options(script: Path) -> set[str]:
    return set(re.findall(r"""add_argument\(\s*["'](--[\w-]+)""", script.read_text()))


def _cli_options(command: str) -> set[str]:
    from dspy_greater.cli.parser import build_parser

    parser = build_parser()
    options = {o for a in parser._actions for o in a.option_strings}
    for action in parser._actions:  # the subcommand's own
        if hasattr(action, "choices") and isinstance(action.choices, dict):
            sub = action.choices[command]
            options |= {o for a in sub._actions for o in a.option_strings}
    return options


def test_commands_in_the_docs_name_real_scripts_and_options():
    checked = 0
    for page, words in _commands():
        if words[:1] == ["python"] and words[1].endswith(".py"):
            script = ROOT / words[1]
            assert script.is_file(), f"{_name(page)}: no script {words[1]}"
            known = _script_options(script)
        elif words[:1] == ["dspy-greater"]:
            known = _cli_options(words[1])
        else:
            continue
        used = {w.split("=", 1)[0] for w in words if w.startswith("--")}
        unknown = sorted(used - known)
        assert not unknown, f"{_name(page)}: {' '.join(words[:2])} has no {unknown}"
        checked += 1
    assert checked >= 10


def test_the_cli_options_name_every_shipped_task():
    from dspy_greater import shipped_bbh_tasks

    options = (ROOT / "docs" / "getting-started.md").read_text()
    missing = [task for task in shipped_bbh_tasks() if f"`{task}`" not in options]
    assert not missing, f"getting-started.md does not name the shipped tasks {missing}"
