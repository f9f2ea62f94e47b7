"""ctypes binding of the native sampler (native/la_sampler.c), with a NumPy fallback.

The native path is a bit-exact mirror of `la_edge.decoding.sampling.choose_rows`: same chosen ids,
same RNG advance, same logprobs and ratio_scale. Logits rows may be NumPy float32 arrays or raw
`POINTER(c_float)` rows (zero copy).
"""

from __future__ import annotations

import ctypes
import os
import sys
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import AllTokensBannedError, InvalidParameterError, NonFiniteLogitsError
from .combination import MAX_BRANCHES, Combination
from .params import GenerationParams
from .rng import SplitMix64
from .sampling import BASE_BANNED, NUCLEUS_BANNED, Choice, choose_rows

ABI_VERSION = 5  # 5: mask_min_p; 4: -inf bans (LA_ERR_NO_TOKEN), only la_choose exported; 3: K rows
MAX_TOP_LOGPROBS = 20
_ERR_NONFINITE, _ERR_INVALID, _ERR_NO_TOKEN = -1, -3, -4
_PFLOAT = ctypes.POINTER(ctypes.c_float)
_CACHE = 64  # converted params / combinations kept per sampler
_I32_MAX = 2**31 - 1

if sys.platform == "win32":
    _LIB_NAMES = ("la_sampler.dll",)
elif sys.platform == "darwin":
    _LIB_NAMES = ("libla_sampler.dylib", "libla_sampler.so")
else:
    _LIB_NAMES = ("libla_sampler.so",)


class LaCombination(ctypes.Structure):
    """Mirror of la_combination."""

    _fields_ = [
        ("k", ctypes.c_int32),
        ("ref", ctypes.c_int32),
        ("adaptive", ctypes.c_int32),
        ("mix", ctypes.c_double * MAX_BRANCHES),
        ("guide", ctypes.c_double * MAX_BRANCHES),
    ]


class LaParams(ctypes.Structure):
    """Mirror of la_params."""

    _fields_ = [
        ("temperature", ctypes.c_double),
        ("mask_top_p", ctypes.c_double),
        ("mask_temperature", ctypes.c_double),
        ("mask_min_p", ctypes.c_double),
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
        ("ratio_scale", ctypes.c_double),
        ("bad_row", ctypes.c_int32),
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
    lib.la_sizeof_combination.restype = ctypes.c_int32
    lib.la_workspace_new.restype = ctypes.c_void_p
    lib.la_workspace_new.argtypes = [ctypes.c_int32]
    lib.la_workspace_free.restype = None
    lib.la_workspace_free.argtypes = [ctypes.c_void_p]
    # Pointers travel as plain ints (c_void_p): the cheapest conversion per call.
    lib.la_choose.restype = ctypes.c_int32
    lib.la_choose.argtypes = [
        ctypes.c_void_p, ctypes.c_int32, ctypes.c_void_p, ctypes.c_int32, ctypes.c_void_p,
        ctypes.c_void_p, ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
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
            sizes = (lib.la_sizeof_params(), lib.la_sizeof_result(), lib.la_sizeof_combination())
            if sizes != (ctypes.sizeof(LaParams), ctypes.sizeof(LaResult), ctypes.sizeof(LaCombination)):
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
    if type(row) is _PFLOAT:
        if not row:
            raise InvalidParameterError(f"{name} logits pointer is NULL")
        return ctypes.addressof(row.contents)
    if isinstance(row, np.ndarray):
        if row.dtype != np.float32 or not row.flags.c_contiguous or row.shape != (n_vocab,):
            raise InvalidParameterError(f"{name} logits must be a contiguous float32 array of shape ({n_vocab},)")
        return row.ctypes.data
    if isinstance(row, int):
        addr = row
    elif isinstance(row, ctypes.c_void_p):
        addr = row.value or 0
    else:
        try:
            addr = ctypes.cast(row, ctypes.c_void_p).value or 0
        except ctypes.ArgumentError as exc:
            raise InvalidParameterError(f"{name} logits must be a float32 array or a POINTER(c_float)") from exc
    if not addr:
        raise InvalidParameterError(f"{name} logits pointer is NULL")
    return addr


def _to_params(p: GenerationParams) -> LaParams:
    return LaParams(
        p.temperature, p.plausibility_top_p, p.mask_temperature, p.plausibility_min_p, p.top_k, p.top_p, p.min_p,
        p.repeat_penalty, p.frequency_penalty, p.presence_penalty, p.repeat_last_n, p.top_logprobs,
    )


def _to_combination(c: Combination) -> LaCombination:
    pad = (0.0,) * (MAX_BRANCHES - c.k)
    return LaCombination(c.k, -1 if c.ref is None else c.ref, int(c.adaptive),
                         (ctypes.c_double * MAX_BRANCHES)(*(c.mix + pad)),
                         (ctypes.c_double * MAX_BRANCHES)(*(c.guide + pad)))


def _by_address(convert):
    def wrapped(key):
        struct = convert(key)
        return struct, ctypes.addressof(struct)
    return wrapped


_PARAMS_AT, _COMBINATION_AT = _by_address(_to_params), _by_address(_to_combination)


def _cached(cache: Dict[int, tuple], key, convert) -> int:
    # The address of a frozen input's struct, looked up by identity; the entry keeps the key alive.
    hit = cache.get(id(key))
    if hit is not None and hit[0] is key:
        return hit[2]
    if len(cache) >= _CACHE:
        cache.clear()
    struct, addr = convert(key)
    cache[id(key)] = (key, struct, addr)
    return addr


def _nonfinite(combo: Combination, row: int) -> NonFiniteLogitsError:
    if row >= combo.k:
        return NonFiniteLogitsError("the mixed base row overflowed to NaN or +inf; refusing to sample")
    return NonFiniteLogitsError(f"branch {row} ({combo.role(row)}) logits hold NaN or +inf; refusing to sample")


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
        # Buffers reused by every call, passed by address.
        self._result = LaResult()
        self._state = ctypes.c_uint64(0)
        self._rows = (ctypes.c_void_p * MAX_BRANCHES)()
        self._addr = tuple(ctypes.addressof(x) for x in (self._result, self._state, self._rows))
        self._hist = (ctypes.c_int32 * 64)()
        self._hist_array: Optional[np.ndarray] = None
        self._params: Dict[int, tuple] = {}
        self._combos: Dict[int, tuple] = {}

    def __del__(self):
        ws, self._ws = getattr(self, "_ws", None), None
        if ws:
            self._lib.la_workspace_free(ws)

    def choose(self, rows: Sequence, combo: Combination, params: GenerationParams,
               rng: Optional[SplitMix64] = None, history: Sequence[int] = ()) -> Choice:
        """One decision over K rows (see sampling.choose_rows); advances rng.state in place."""
        if len(rows) != combo.k:
            raise InvalidParameterError(f"{len(rows)} logits rows for a combination of {combo.k} branches")
        ptrs = self._rows
        for i, row in enumerate(rows):
            ptrs[i] = _address(row, self.n_vocab, f"branch {i}")
        lp = _cached(self._params, params, _PARAMS_AT)
        lc = _cached(self._combos, combo, _COMBINATION_AT)
        hist, n_hist = self._history(history, params)
        result, state, rows_addr = self._addr
        if not params.greedy:
            if rng is None:
                raise ValueError("sampling needs an rng")
            self._state.value = rng.state
        rc = self._lib.la_choose(
            rows_addr, combo.k, lc, self.n_vocab, lp,
            hist, n_hist, state, self._ws, result,
        )
        res = self._result
        if rc != 0:
            if rc == _ERR_NONFINITE:
                raise _nonfinite(combo, res.bad_row)
            if rc == _ERR_NO_TOKEN:
                raise AllTokensBannedError(BASE_BANNED if res.bad_row == combo.k else NUCLEUS_BANNED)
            raise InvalidParameterError(f"la_choose rejected its arguments (code {rc}); check history ids >= 0")
        if not params.greedy:
            rng.state = self._state.value
        n = res.n_top
        top = tuple(zip(res.top_ids[:n], res.top_logprobs[:n])) if n else ()
        return Choice(res.token, res.logprob, top, res.nucleus_size, res.ratio_scale)

    def _history(self, history, params: GenerationParams) -> Tuple[Optional[int], int]:
        """(address, count) of the penalty window, copied into a reused int32 buffer."""
        if params.repeat_last_n == 0 or len(history) == 0 or (
            params.repeat_penalty == 1.0 and params.frequency_penalty == 0.0 and params.presence_penalty == 0.0
        ):
            return None, 0
        recent = history[-params.repeat_last_n:]
        if isinstance(recent, np.ndarray):
            self._hist_array = np.ascontiguousarray(recent, dtype=np.int32)  # alive until the call returns
            return self._hist_array.ctypes.data, self._hist_array.size
        if min(recent) < 0 or max(recent) > _I32_MAX:  # keep int32 from wrapping: negatives stay invalid,
            recent = [-1 if t < 0 else t for t in recent if t <= _I32_MAX]  # ids past the vocab are ignored
        m = len(recent)
        if m > len(self._hist):
            self._hist = (ctypes.c_int32 * max(m, 2 * len(self._hist)))()
        self._hist[:m] = recent
        return ctypes.addressof(self._hist), m


class NumpySampler:
    """The NumPy reference behind the same interface; pointers are wrapped without copying."""

    path = "numpy"

    def __init__(self, n_vocab: int):
        self.n_vocab = int(n_vocab)

    def _row(self, row):
        if isinstance(row, np.ndarray):
            return row
        if isinstance(row, int):
            row = ctypes.cast(row, _PFLOAT)
        elif not isinstance(row, _PFLOAT):
            row = ctypes.cast(row, _PFLOAT)
        if not row:
            raise InvalidParameterError("logits pointer is NULL")
        return np.ctypeslib.as_array(row, shape=(self.n_vocab,))

    def choose(self, rows: Sequence, combo: Combination, params: GenerationParams,
               rng: Optional[SplitMix64] = None, history: Sequence[int] = ()) -> Choice:
        """One decision via sampling.choose_rows."""
        return choose_rows(tuple(self._row(r) for r in rows), combo, params, rng, list(history))


def make_chooser(n_vocab: int, prefer_native: bool = True):
    """A sampler with `.choose(rows, combo, params, rng, history)`: native when loaded, else NumPy.

    Falling back from a preferred native sampler emits one warning with the reason.
    """
    if prefer_native:
        if _LIB is not None:
            return NativeSampler(n_vocab)
        warnings.warn(f"la_edge native sampler unavailable, using the slower NumPy path: {_LOAD_ERROR}",
                      RuntimeWarning, stacklevel=2)
    return NumpySampler(n_vocab)
