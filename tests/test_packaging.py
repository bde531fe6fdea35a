"""The distribution ships `adapters/` as `dspy_greater.adapters`, the BBH files and py.typed."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contents_and_a_normal_install_import(tmp_path):
    # setuptools stages files in ./build and keeps what it staged before: start clean.
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    [wheel] = (tmp_path / "dist").glob("dspy_greater-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "dspy_greater/adapters/__init__.py" in names
    assert "dspy_greater/adapters/hf_gradient.py" in names
    assert "dspy_greater/py.typed" in names
    assert "dspy_greater/tasks/bbh/LICENSE" in names
    assert "dspy_greater/tasks/bbh/sports_understanding.json" in names
    assert not any(n.startswith(("adapters/", "tests/", "examples/")) for n in names)

    # Install the wheel alone into a folder and import it from elsewhere: no source tree around.
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    code = (
        "import dspy_greater.adapters.base as b, dspy_greater; "
        "print(b.__file__); print(len(dspy_greater.load_bbh('sports_understanding')))"
    )
    out = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            f"import sys; sys.path.insert(0, {str(target)!r}); "
            "import site; sys.path.extend(site.getsitepackages()); " + code,
        ],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert out[0].startswith(str(target))
    assert out[1] == "250"


def test_a_source_checkout_imports_its_engines_without_installing(tmp_path):
    # -I: no site-packages, so no editable install's finder; only the checkout on sys.path.
    out = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
            "import dspy_greater.adapters.hf_gradient as m; print(m.__file__)",
        ],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert Path(out).resolve() == ROOT / "adapters" / "hf_gradient.py"
