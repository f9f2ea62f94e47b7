"""Layer 2, backends: model runtimes behind one protocol (llama.cpp, ONNX Runtime).

`load_backend(path, kind)` is the one way to open a model; backends never import the runtime.
"""

from __future__ import annotations

import os
from typing import Optional

from ..errors import InvalidParameterError
from .base import KV_CACHE_TYPES, Backend, BatchEntry, BackendOptions, KvShape
from .models import resolve_model

KINDS = ("auto", "llama.cpp", "onnx")

__all__ = ["Backend", "BatchEntry", "BackendOptions", "KINDS", "KV_CACHE_TYPES", "KvShape", "detect_kind",
           "kv_shape", "load_backend"]


def detect_kind(path: str, kind: str = "auto") -> str:
    """'onnx' for a folder made by `la-edge export onnx` (or a .onnx file), else 'llama.cpp'."""
    if kind not in KINDS:
        raise InvalidParameterError(f"backend must be one of {', '.join(KINDS)}, not {kind!r}")
    if kind != "auto":
        return kind
    return "onnx" if (os.path.isdir(path) or str(path).endswith(".onnx")) else "llama.cpp"


def load_backend(path: Optional[str] = None, kind: str = "auto",
                 options: Optional[BackendOptions] = None) -> Backend:
    """Open a model: a path (default: $LA_EDGE_MODEL or the embedded model) with the given options."""
    options = options or BackendOptions()
    resolved = resolve_model(path)
    if detect_kind(resolved, kind) == "onnx":
        from .onnxrt import OnnxBackend

        return OnnxBackend.from_options(resolved, options)
    from .llamacpp import LlamaCppBackend

    return LlamaCppBackend.from_options(resolved, options)


def kv_shape(path: Optional[str] = None, kind: str = "auto") -> Optional[KvShape]:
    """What one KV cell of the model holds, read without loading weights or making a context
    (None for ONNX, whose cache grows with the tokens instead of being allocated at load)."""
    resolved = resolve_model(path)
    if detect_kind(resolved, kind) == "onnx":
        return None
    from .gguf_meta import read_kv_shape

    return read_kv_shape(resolved)
