"""Typed errors. Every error the library raises derives from LaEdgeError."""

from __future__ import annotations


class LaEdgeError(Exception):
    """Base class of all la_edge errors."""


class InvalidParameterError(LaEdgeError, ValueError):
    """A generation parameter or request field is out of range; the message says how to fix it."""


class MemoryBudgetError(InvalidParameterError):
    """The KV-cache budget cannot hold one request of two branches; the message says what would fit."""


class ModelNotFoundError(LaEdgeError, FileNotFoundError):
    """The model file does not exist (or the embedded default is not installed)."""


class ModelLoadError(LaEdgeError):
    """The model file exists but could not be loaded (not GGUF, corrupt, unsupported)."""


class MissingDependencyError(LaEdgeError, ImportError):
    """An optional package a command needs is not installed; the message names the pip install."""


class ChatTemplateError(LaEdgeError):
    """The model's chat template is missing, unknown or failed to render."""


class ContextOverflowError(LaEdgeError):
    """The prompts plus max_tokens do not fit the context window."""


class NonFiniteLogitsError(LaEdgeError):
    """A logits row holds NaN or +inf; it is reported, never sampled."""


class AllTokensBannedError(NonFiniteLogitsError):
    """Every candidate token is banned (-inf): the base row is all -inf, or each token of its nucleus is
    -inf in a row that guides it (or in the plain row it is measured against). Nothing is sampled."""


class BusyError(LaEdgeError):
    """The engine is at capacity; retry later."""


class _WithCause(LaEdgeError):
    """An error that keeps the exception behind it as `cause`."""

    def __init__(self, message: str, cause: "BaseException | None" = None):
        self.cause = cause
        super().__init__(message)


class EngineUnavailableError(_WithCause):
    """The engine stopped (shut down, or its thread died); `cause` keeps why. Servers answer 503."""


class RequestTimeoutError(LaEdgeError, TimeoutError):
    """The request ran past its deadline (GenerationParams.timeout); its sequences are freed."""


class StepFailedError(_WithCause):
    """An unexpected error while decoding or sampling a batch; only that batch's requests get it."""


class DecodeError(LaEdgeError):
    """llama_decode returned a non-zero code; `code` keeps it."""

    def __init__(self, code: int, message: str = ""):
        self.code = code
        super().__init__(message or f"llama_decode failed with code {code}")


class NoKvSlotError(DecodeError):
    """Code 1: no KV-cache slot for the batch (reduce the batch or enlarge n_ctx)."""


class DecodeAbortedError(DecodeError):
    """Code 2: decoding was aborted by the abort callback."""


class InvalidBatchError(DecodeError):
    """Code -1: llama.cpp rejected the batch as invalid."""


class FatalDecodeError(DecodeError):
    """Code < -1: a fatal error inside llama.cpp."""


def check_unicode(text: str, name: str = "text") -> bytes:
    """`text` as UTF-8 bytes; InvalidParameterError naming `name` when it holds a lone surrogate."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidParameterError(f"{name} is not valid Unicode (lone surrogate at index {exc.start}); "
                                    "send UTF-8 text") from None


def decode_error(code: int) -> DecodeError:
    """Map a llama_decode return code to its typed exception."""
    if code == 1:
        return NoKvSlotError(code, "llama_decode: no KV slot for the batch (code 1); enlarge n_ctx")
    if code == 2:
        return DecodeAbortedError(code, "llama_decode: aborted (code 2)")
    if code == -1:
        return InvalidBatchError(code, "llama_decode: invalid input batch (code -1)")
    if code < -1:
        return FatalDecodeError(code, f"llama_decode: fatal error (code {code})")
    return DecodeError(code)
