"""ctypes binding of the native sampler (native/la_sampler.c), with a NumPy fallback.

The native path is a bit-exact mirror of `la_edge.sampling.choose_token`: same chosen ids, same
RNG advance. Logits may be NumPy float32 arrays or raw `POINTER(c_float)` rows (zero copy).
"""

from __future__ import annotations

import ctypes
import os
import sys
import warnings
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from ..errors import InvalidParameterError, NonFiniteLogitsError
from .params import GenerationParams
from .rng import SplitMix64
from .sampling import Choice, choose_token

ABI_VERSION = 2  # 2: penalties apply in greedy decoding too
MAX_TOP_LOGPROBS = 20
_ERR_NONFINITE_P, _ERR_NONFINITE_0, _ERR_INVALID = -1, -2, -3

if sys.platform == "win32":
    _LIB_NAMES = ("la_sampler.dll",)
elif sys.platform == "darwin":
    _LIB_NAMES = ("libla_sampler.dylib", "libla_sampler.so")
else:
    _LIB_NAMES = ("libla_sampler.so",)


class LaParams(ctypes.Structure):
    """Mirror of la_params."""

    _fields_ = [
        ("ratio", ctypes.c_double),
        ("temperature", ctypes.c_double),
        ("mask_top_p", ctypes.c_double),
        ("mask_temperature", ctypes.c_double),
        ("top_k", ctypes.c_int32),
        ("top_p", ctypes.c_double),
        ("min_p", ctypes.c_double),
        ("repeat_penalty", ctypes.c_double),
        ("frequency_penalty", ctypes.c_double),
        ("presence_penalty", ctypes.c_double),
        ("repeat_last_n", ctypes.c_int32),
        ("top_logprobs", ctypes.c_int32),
    ]


class LaResult(ctypes.Structure):
    """Mirror of la_result."""

    _fields_ = [
        ("token", ctypes.c_int32),
        ("logprob", ctypes.c_double),
        ("nucleus_size", ctypes.c_int32),
        ("n_top", ctypes.c_int32),
        ("top_ids", ctypes.c_int32 * MAX_TOP_LOGPROBS),
        ("top_logprobs", ctypes.c_double * MAX_TOP_LOGPROBS),
    ]


def _candidates() -> List[Path]:
    paths: List[Path] = []
    env = os.environ.get("LA_EDGE_NATIVE_LIB")
    if env:
        paths.append(Path(env))
    here = Path(__file__).resolve().parent
    paths += [here / name for name in _LIB_NAMES]
    try:
        from importlib.metadata import PackageNotFoundError, files

        try:
            for f in files("la-edge") or ():
                if f.name in _LIB_NAMES:
                    paths.append(Path(f.locate()).resolve())
        except PackageNotFoundError:
            pass
    except ImportError:
        pass
    build = here.parent.parent / "build"
    if build.is_dir():
        for name in _LIB_NAMES:
            paths += sorted(build.glob(name)) + sorted(build.glob(f"*/{name}")) + sorted(build.glob(f"*/*/{name}"))
    seen, unique = set(), []
    for p in paths:
        if p not in seen:
            seen.add(p)
            unique.append(p)
    return unique


def _bind(lib: ctypes.CDLL) -> None:
    lib.la_abi_version.restype = ctypes.c_int32
    lib.la_sizeof_params.restype = ctypes.c_int32
    lib.la_sizeof_result.restype = ctypes.c_int32
    lib.la_workspace_new.restype = ctypes.c_void_p
    lib.la_workspace_new.argtypes = [ctypes.c_int32]
    lib.la_workspace_free.restype = None
    lib.la_workspace_free.argtypes = [ctypes.c_void_p]
    lib.la_relative_weights.restype = None
    lib.la_relative_weights.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_double, ctypes.c_void_p]
    lib.la_row_mass.restype = ctypes.c_double
    lib.la_row_mass.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_double]
    lib.la_choose.restype = ctypes.c_int32
    lib.la_choose.argtypes = [
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32, ctypes.POINTER(LaParams),
        ctypes.c_void_p, ctypes.c_int32, ctypes.POINTER(ctypes.c_uint64), ctypes.c_void_p,
        ctypes.POINTER(LaResult),
    ]


def _load():
    errors = []
    for path in _candidates():
        if not path.is_file():
            if path == Path(os.environ.get("LA_EDGE_NATIVE_LIB") or "\0"):
                errors.append(f"LA_EDGE_NATIVE_LIB={path} does not exist")
            continue
        try:
            lib = ctypes.CDLL(str(path))
            _bind(lib)
            if lib.la_abi_version() != ABI_VERSION:
                raise OSError(f"ABI version {lib.la_abi_version()} != {ABI_VERSION}")
            if (lib.la_sizeof_params(), lib.la_sizeof_result()) != (ctypes.sizeof(LaParams), ctypes.sizeof(LaResult)):
                raise OSError("struct layout differs from la_edge/native.py")
            return lib, str(path), None
        except (OSError, AttributeError) as exc:
            errors.append(f"{path}: {exc}")
    if not errors:
        errors.append("libla_sampler was not found (build it with CMake or set LA_EDGE_NATIVE_LIB)")
    return None, None, "; ".join(errors)


_LIB, LIB_PATH, _LOAD_ERROR = _load()


def available() -> bool:
    """True when the native sampler library is loaded."""
    return _LIB is not None


def load_error() -> Optional[str]:
    """Why the native library could not be loaded, or None when it is loaded."""
    return _LOAD_ERROR


def _address(row, n_vocab: int, name: str) -> int:
    if isinstance(row, np.ndarray):
        if row.dtype != np.float32 or not row.flags.c_contiguous or row.shape != (n_vocab,):
            raise InvalidParameterError(f"{name} logits must be a contiguous float32 array of shape ({n_vocab},)")
        return row.ctypes.data
    if isinstance(row, int):
        return row
    if isinstance(row, ctypes.c_void_p):
        return row.value or 0
    try:
        return ctypes.cast(row, ctypes.c_void_p).value or 0
    except ctypes.ArgumentError as exc:
        raise InvalidParameterError(f"{name} logits must be a float32 array or a POINTER(c_float)") from exc


def _to_params(p: GenerationParams) -> LaParams:
    return LaParams(
        p.ratio, p.temperature, p.plausibility_top_p, p.mask_temperature, p.top_k, p.top_p, p.min_p,
        p.repeat_penalty, p.frequency_penalty, p.presence_penalty, p.repeat_last_n, p.top_logprobs,
    )


def native_relative_weights(values: np.ndarray, temperature: float) -> np.ndarray:
    """The C relative_weights of a float32 row (for bit-exactness checks)."""
    v = np.ascontiguousarray(values, dtype=np.float32)
    w = np.empty(v.size, dtype=np.float64)
    _LIB.la_relative_weights(v.ctypes.data, v.size, float(temperature), w.ctypes.data)
    return w


def native_row_mass(values: np.ndarray, temperature: float) -> float:
    """The C nucleus total (mass_total of relative_weights) of a float32 row."""
    v = np.ascontiguousarray(values, dtype=np.float32)
    return float(_LIB.la_row_mass(v.ctypes.data, v.size, float(temperature)))


class NativeSampler:
    """The C sampler for rows of n_vocab logits; one instance per thread (it owns scratch buffers)."""

    path = "native"

    def __init__(self, n_vocab: int):
        if _LIB is None:
            raise RuntimeError(f"native sampler unavailable: {_LOAD_ERROR}")
        if not 1 <= int(n_vocab) < 2**31:
            raise InvalidParameterError(f"n_vocab must be >= 1, got {n_vocab}")
        self.n_vocab = int(n_vocab)
        self._lib = _LIB
        self._ws = _LIB.la_workspace_new(self.n_vocab)
        if not self._ws:
            raise MemoryError("la_workspace_new failed")
        self._result = LaResult()
        self._state = ctypes.c_uint64(0)
        self._params_key: Optional[GenerationParams] = None
        self._params = LaParams()
        self._hist = np.zeros(0, dtype=np.int32)

    def __del__(self):
        ws, self._ws = getattr(self, "_ws", None), None
        if ws:
            self._lib.la_workspace_free(ws)

    def choose(self, zp, z0, params: GenerationParams, rng: Optional[SplitMix64] = None,
               history: Sequence[int] = ()) -> Choice:
        """One decision (see sampling.choose_token); advances rng.state in place."""
        if params is not self._params_key:
            self._params = _to_params(params)
            self._params_key = params
        zp_addr = _address(zp, self.n_vocab, "principled")
        z0_addr = None if z0 is None else _address(z0, self.n_vocab, "plain")
        if not zp_addr or (z0 is not None and not z0_addr):
            raise InvalidParameterError("logits pointer is NULL")
        hist = self._history(history, params)
        if not params.greedy:
            if rng is None:
                raise ValueError("sampling needs an rng")
            self._state.value = rng.state
        res = self._result
        rc = self._lib.la_choose(
            zp_addr, z0_addr, self.n_vocab, ctypes.byref(self._params),
            hist.ctypes.data if hist.size else None, int(hist.size), ctypes.byref(self._state),
            self._ws, ctypes.byref(res),
        )
        if rc != 0:
            if rc == _ERR_NONFINITE_P:
                raise NonFiniteLogitsError("principled logits hold NaN or +inf; refusing to sample")
            if rc == _ERR_NONFINITE_0:
                raise NonFiniteLogitsError("plain logits hold NaN or +inf; refusing to sample")
            raise InvalidParameterError(f"la_choose rejected its arguments (code {rc}); check history ids >= 0")
        if not params.greedy:
            rng.state = self._state.value
        n = res.n_top
        top = tuple(zip(res.top_ids[:n], res.top_logprobs[:n])) if n else ()
        return Choice(token=res.token, logprob=res.logprob, top=top, nucleus_size=res.nucleus_size)

    @staticmethod
    def _history(history, params: GenerationParams) -> np.ndarray:
        if params.repeat_last_n == 0 or len(history) == 0 or (
            params.repeat_penalty == 1.0 and params.frequency_penalty == 0.0 and params.presence_penalty == 0.0
        ):
            return np.zeros(0, dtype=np.int32)
        recent = history[-params.repeat_last_n:]
        if isinstance(recent, np.ndarray) and recent.dtype == np.int32 and recent.flags.c_contiguous:
            return recent
        return np.ascontiguousarray(recent, dtype=np.int32)


class NumpySampler:
    """The NumPy reference behind the same interface; pointers are wrapped without copying."""

    path = "numpy"

    def __init__(self, n_vocab: int):
        self.n_vocab = int(n_vocab)

    def _row(self, row):
        if row is None or isinstance(row, np.ndarray):
            return row
        if isinstance(row, int):
            row = ctypes.cast(row, ctypes.POINTER(ctypes.c_float))
        elif not isinstance(row, ctypes.POINTER(ctypes.c_float)):
            row = ctypes.cast(row, ctypes.POINTER(ctypes.c_float))
        return np.ctypeslib.as_array(row, shape=(self.n_vocab,))

    def choose(self, zp, z0, params: GenerationParams, rng: Optional[SplitMix64] = None,
               history: Sequence[int] = ()) -> Choice:
        """One decision via sampling.choose_token."""
        return choose_token(self._row(zp), self._row(z0), params, rng, list(history))


def make_chooser(n_vocab: int, prefer_native: bool = True):
    """A sampler with `.choose(zp, z0, params, rng, history)`: native when loaded, else NumPy.

    Falling back from a preferred native sampler emits one warning with the reason.
    """
    if prefer_native:
        if _LIB is not None:
            return NativeSampler(n_vocab)
        warnings.warn(f"la_edge native sampler unavailable, using the slower NumPy path: {_LOAD_ERROR}",
                      RuntimeWarning, stacklevel=2)
    return NumpySampler(n_vocab)
