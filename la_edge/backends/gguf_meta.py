"""GGUF metadata without weights or a context, read by ggml's own GGUF reader (gguf.h in libggml-base,
the code llama.cpp loads every model with): the KV cell shape that sizes a KV budget before a load,
and the architecture that explains a failed one.

Any file that reader rejects (truncated, a corrupt length or count, not GGUF at all) is a
ModelLoadError with one line saying why, in ggml's words. ggml checks every length and count against
its limits before it allocates, and reads the header in C: milliseconds even for a 262k-token
vocabulary, where the Python `gguf.GGUFReader` takes seconds (it builds each vocabulary string in
Python).
"""

from __future__ import annotations

import ctypes
import math
import os
import pathlib
import re
import threading
from typing import Any, Dict, List, Optional

from ..errors import ModelLoadError, ModelNotFoundError
from .base import KvShape
from .models import GGUF_MAGIC

__all__ = ["check_gguf", "gguf_architecture", "gguf_metadata", "kv_shape_of", "read_kv_shape"]

ARRAY_MAX = 4096  # arrays up to this length are read (per-layer values); longer ones (vocabularies) are None

# enum gguf_type (gguf.h) -> ctypes type of one value; 8 is STRING, 9 ARRAY
_SCALARS = {0: ctypes.c_uint8, 1: ctypes.c_int8, 2: ctypes.c_uint16, 3: ctypes.c_int16, 4: ctypes.c_uint32,
            5: ctypes.c_int32, 6: ctypes.c_float, 7: ctypes.c_bool, 10: ctypes.c_uint64, 11: ctypes.c_int64,
            12: ctypes.c_double}
_STRING, _ARRAY = 8, 9

# Sliding-window layer patterns llama.cpp sets per architecture when the GGUF gives none
# (src/models/*.cpp, load_swa_pattern): (n, dense_first). n = 6: five window layers, then one full.
_SWA_PATTERNS = {"gemma3": (6, False), "gemma2": (2, False), "gemma3n": (5, False), "gemma-embedding": (6, False),
                 "cohere2": (4, False), "exaone4": (4, False), "olmo2": (4, False), "openai-moe": (2, False),
                 "gpt-oss": (2, False), "plamo3": (8, False), "afmoe": (4, False), "smallthinker": (4, True)}


class _InitParams(ctypes.Structure):
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]  # struct gguf_init_params


_LOG_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_lib = None
_lib_lock = threading.Lock()
_log_lock = threading.Lock()


def _ggml():
    """libggml-base of the llama-cpp-python build in use, with the gguf.h calls declared (once)."""
    global _lib
    with _lib_lock:
        if _lib is None:
            import llama_cpp
            from llama_cpp._ctypes_extensions import load_shared_library

            base = os.environ.get("LLAMA_CPP_LIB_PATH") or os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
            lib = load_shared_library("ggml-base", pathlib.Path(base))
            p, i64, sz, s, i = ctypes.c_void_p, ctypes.c_int64, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_int
            for name, res, args in (
                ("gguf_init_from_file", p, [s, _InitParams]), ("gguf_free", None, [p]),
                ("gguf_get_n_kv", i64, [p]), ("gguf_get_key", s, [p, i64]), ("gguf_get_kv_type", i, [p, i64]),
                ("gguf_get_val_data", p, [p, i64]), ("gguf_get_val_str", s, [p, i64]),
                ("gguf_get_arr_type", i, [p, i64]), ("gguf_get_arr_n", sz, [p, i64]),
                ("gguf_get_arr_data", p, [p, i64]), ("gguf_get_arr_str", s, [p, i64, sz]),
                ("gguf_get_n_tensors", i64, [p]), ("gguf_get_data_offset", sz, [p]),
                ("gguf_get_tensor_offset", sz, [p, i64]), ("gguf_get_tensor_size", sz, [p, i64]),
                ("ggml_log_get", None, [ctypes.POINTER(p), ctypes.POINTER(p)]), ("ggml_log_set", None, [p, p]),
            ):
                fn = getattr(lib, name)
                fn.restype, fn.argtypes = res, args
            _lib = lib
    return _lib


def _open(path: str) -> int:
    """gguf_init_from_file without tensor data; ModelLoadError with ggml's reasons when it fails.

    ggml logs why a file is rejected: this thread's lines are kept for the message while the call runs
    (other threads' go on to the logger that was set)."""
    lib = _ggml()
    lines: List[str] = []
    me = threading.get_ident()
    with _log_lock:
        prev_cb, prev_ud = ctypes.c_void_p(), ctypes.c_void_p()
        lib.ggml_log_get(ctypes.byref(prev_cb), ctypes.byref(prev_ud))
        forward = _LOG_CALLBACK(prev_cb.value) if prev_cb.value else None

        def keep(level: int, text: bytes, user_data) -> None:
            if threading.get_ident() == me:
                lines.append((text or b"").decode("utf-8", "replace"))
            elif forward is not None:
                forward(level, text, prev_ud.value)

        callback = _LOG_CALLBACK(keep)
        lib.ggml_log_set(ctypes.cast(callback, ctypes.c_void_p), None)
        try:
            ctx = lib.gguf_init_from_file(os.fsencode(path), _InitParams(True, None))
        finally:
            lib.ggml_log_set(prev_cb, prev_ud)
    if not ctx:
        why = "; ".join(re.sub(r"^\w+: ", "", line.strip()) for line in "".join(lines).splitlines() if line.strip())
        raise ModelLoadError(f"corrupt or truncated GGUF file ({why or 'ggml could not read its header'}): {path}")
    return ctx


def check_gguf(path: str) -> None:
    """Raise ModelNotFoundError / ModelLoadError unless `path` is a file that starts like a GGUF."""
    if not os.path.exists(path):
        raise ModelNotFoundError(f"model file not found: {path}")
    if os.path.isdir(path):
        raise ModelLoadError(f"model path is a directory, expected a .gguf file: {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ModelLoadError(f"not a GGUF file (magic {magic!r}, expected b'GGUF'): {path}")


def _value(lib, ctx: int, i: int, array_max: int) -> Any:
    kind = lib.gguf_get_kv_type(ctx, i)
    if kind == _STRING:
        return lib.gguf_get_val_str(ctx, i).decode("utf-8", "replace")
    if kind in _SCALARS:
        return ctypes.cast(lib.gguf_get_val_data(ctx, i), ctypes.POINTER(_SCALARS[kind]))[0]
    if kind != _ARRAY:
        return None
    elem, n = lib.gguf_get_arr_type(ctx, i), lib.gguf_get_arr_n(ctx, i)
    if n > array_max:
        return None
    if elem == _STRING:
        return [lib.gguf_get_arr_str(ctx, i, j).decode("utf-8", "replace") for j in range(n)]
    if elem in _SCALARS:
        return list((_SCALARS[elem] * n).from_address(lib.gguf_get_arr_data(ctx, i))) if n else []
    return None  # ggml keeps no nested arrays


def gguf_metadata(path: str, array_max: int = ARRAY_MAX) -> Dict[str, Any]:
    """The GGUF header's key-value metadata: numbers, strings, and arrays of up to `array_max` values
    (None for longer ones). ModelNotFoundError / ModelLoadError (one line) unless the whole file reads:
    a header ggml accepts, and tensor data that the file holds in full."""
    check_gguf(path)
    lib = _ggml()
    ctx = _open(path)
    try:
        meta = {lib.gguf_get_key(ctx, i).decode("utf-8", "replace"): _value(lib, ctx, i, array_max)
                for i in range(lib.gguf_get_n_kv(ctx))}
        n_tensors = lib.gguf_get_n_tensors(ctx)
        end = lib.gguf_get_data_offset(ctx) + max(
            (lib.gguf_get_tensor_offset(ctx, t) + lib.gguf_get_tensor_size(ctx, t) for t in range(n_tensors)),
            default=0)
    finally:
        lib.gguf_free(ctx)
    size = os.path.getsize(path)
    if n_tensors and end > size:
        raise ModelLoadError(f"truncated GGUF file (its {n_tensors} tensors need {end} bytes, the file has {size}): "
                             f"{path}")
    return meta


def gguf_architecture(path: str) -> Optional[str]:
    """`general.architecture` of a GGUF file (None if absent); errors as gguf_metadata's."""
    arch = gguf_metadata(path, array_max=0).get("general.architecture")
    return arch if isinstance(arch, str) else None


def kv_shape_of(meta: Dict[str, Any]) -> KvShape:
    """The KV cell shape a GGUF's metadata describes: layers, KV heads, head sizes, and which layers keep
    only a sliding window. A window pattern llama.cpp sets in code for an architecture this table does
    not know counts every layer as full (an overestimate)."""
    arch = meta.get("general.architecture") or ""

    def get(key, default=0):  # a number, or the default for anything else (NaN and inf included)
        v = meta.get(f"{arch}.{key}", default)
        v = max((x for x in v if _number(x)), default=default) if isinstance(v, list) else v
        return v if _number(v) else default

    n_layer, n_head = int(get("block_count")), max(1, int(get("attention.head_count", 1)))
    n_head_kv = int(get("attention.head_count_kv", n_head)) or n_head
    head_k = int(get("attention.key_length")) or int(get("embedding_length")) // n_head
    head_v = int(get("attention.value_length")) or head_k
    n_swa, n_layer_swa = int(get("attention.sliding_window")), 0
    pattern = meta.get(f"{arch}.attention.sliding_window_pattern")
    if n_swa and isinstance(pattern, list):  # one flag per layer
        n_layer_swa = sum(bool(x) for x in pattern[:n_layer])
    elif n_swa:
        given = isinstance(pattern, int) and pattern > 0
        n, dense_first = (int(pattern), False) if given else _SWA_PATTERNS.get(arch, (0, False))
        if n:
            n_layer_swa = sum((il % n != 0) if dense_first else (il % n < n - 1) for il in range(n_layer))
    return KvShape(n_layer, n_head_kv, head_k, head_v, n_swa if n_layer_swa else 0, n_layer_swa)


def _number(v: Any) -> bool:
    return isinstance(v, int) or (isinstance(v, float) and math.isfinite(v))


def read_kv_shape(path: str) -> KvShape:
    """The model's KV cell shape from its GGUF header (no weights, no context); errors as gguf_metadata's."""
    return kv_shape_of(gguf_metadata(path))
