"""la_edge: on-device Linear Alignment decoding (z = z_P + r*(z_P - z_0)) on llama.cpp."""

from .errors import (
    BusyError, ChatTemplateError, ContextOverflowError, DecodeAbortedError, DecodeError, EngineUnavailableError,
    FatalDecodeError, InvalidBatchError, InvalidParameterError, LaEdgeError, MemoryBudgetError, ModelLoadError,
    ModelNotFoundError, NoKvSlotError, NonFiniteLogitsError, RequestTimeoutError, StepFailedError,
)
from .decoding.params import GenerationParams
from .runtime.prompts import PromptPair

__version__ = "0.1.0"

__all__ = [
    "Aligner", "Request", "GenerationParams", "PromptPair", "LaEdgeError", "InvalidParameterError",
    "ModelNotFoundError", "ModelLoadError", "ChatTemplateError", "ContextOverflowError",
    "NonFiniteLogitsError", "BusyError", "DecodeError", "NoKvSlotError", "DecodeAbortedError",
    "InvalidBatchError", "FatalDecodeError", "EngineUnavailableError", "StepFailedError", "RequestTimeoutError",
    "MemoryBudgetError",
]


def __getattr__(name):
    # Aligner pulls in llama.cpp; import it lazily so the pure-math modules stay light.
    if name == "Aligner":
        from .runtime.aligner import Aligner

        return Aligner
    if name == "Request":
        from .runtime.request import Request

        return Request
    raise AttributeError(name)
