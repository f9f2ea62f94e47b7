"""KV-cache memory: what a context will allocate, and what fits a budget. Pure arithmetic, no model.

A *cell* is one token of one sequence: K and V of every layer. llama.cpp allocates the whole cache at
load: each sequence (request x branch) gets n_ctx cells, rounded up to 256. The window layers of a
sliding-window model (Gemma-3: 5 of every 6) hold as many: la_edge keeps llama.cpp's default full-size
window cache (swa_full), where the prompt cache can still cut a sequence anywhere; without it they
would hold window + n_ubatch cells (kv_bytes(swa_full=False)).

Order of sacrifice when a budget is short (`plan`): concurrent requests first (down to 1), then the
branches a request may have (down to 2), then the context of each branch (down to MIN_CTX).
`max_requests` / `n_ctx` that the caller fixed are never changed: the budget then only checks and
warns. `auto` is AUTO_SHARE of the memory available at load (MemAvailable).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

from ..backends.base import KV_TYPES, KvShape
from ..errors import InvalidParameterError, MemoryBudgetError

__all__ = ["KV_TYPES", "AUTO", "AUTO_SHARE", "MIN_CTX", "KvPlan", "parse_size", "format_size", "cell_bytes",
           "kv_bytes", "resolve_budget", "mem_available", "env_available", "plan"]

# Bytes per block and elements per block of llama.cpp's cache types (ggml type traits).
AUTO = "auto"
AUTO_SHARE = 0.25  # --kv-budget auto: this share of the memory available at load
PAD = 256  # llama.cpp rounds each sequence's cells (and the window's) up to this
MIN_CTX = 256  # the smallest context per branch the budget may choose
_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024 ** 2, "mb": 1000 ** 2, "mib": 1024 ** 2,
          "g": 1024 ** 3, "gb": 1000 ** 3, "gib": 1024 ** 3, "t": 1024 ** 4, "tb": 1000 ** 4, "tib": 1024 ** 4}


def parse_size(text: Union[str, int]) -> Union[int, str]:
    """Bytes of "1.5GiB", "800MB", "512M" (K/M/G alone are binary, KB/MB/GB decimal), or AUTO."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        s = str(text).strip().lower()
        if s == AUTO:
            return AUTO
        m = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)", s)
        if not m or m.group(2) not in _UNITS:
            raise InvalidParameterError(f"--kv-budget: {text!r} is not a size; give e.g. 1.5GiB, 800MB, 512M "
                                        "or auto")
        value = int(float(m.group(1)) * _UNITS[m.group(2)])
    if value <= 0:
        raise InvalidParameterError(f"--kv-budget must be positive, got {text!r}")
    return value


def format_size(n: float) -> str:
    """Bytes in binary units, three significant figures ("1.50 GiB", "22.5 KiB")."""
    for unit, scale in (("GiB", 1024 ** 3), ("MiB", 1024 ** 2), ("KiB", 1024)):
        if n >= scale:
            v = n / scale
            return f"{v:.3g} {unit}" if v < 1000 else f"{v:.0f} {unit}"
    return f"{int(n)} B"


def _check_type(kv_type: str) -> None:
    if kv_type not in KV_TYPES:
        raise InvalidParameterError(f"kv_type must be one of {', '.join(KV_TYPES)}, not {kv_type!r}")


def _row(n: int, kv_type: str) -> int:
    size, block = KV_TYPES[kv_type].block_bytes, KV_TYPES[kv_type].block
    return -(-n // block) * size


def _layer_bytes(shape: KvShape, kv_type: str) -> int:
    """Bytes of K and V for one cell of one layer."""
    _check_type(kv_type)
    return _row(shape.n_head_kv * shape.head_k, kv_type) + _row(shape.n_head_kv * shape.head_v, kv_type)


def cell_bytes(shape: KvShape, kv_type: str = "f16") -> int:
    """Bytes one token of one sequence costs in every layer (its share of a sliding window included)."""
    return shape.n_layer * _layer_bytes(shape, kv_type)


def _pad(n: int) -> int:
    return -(-n // PAD) * PAD


def kv_bytes(shape: KvShape, kv_type: str, n_seq: int, n_ctx: int, n_ubatch: int = 512,
             unified: bool = False, swa_full: bool = True) -> int:
    """Bytes of the KV cache llama.cpp allocates for n_seq sequences of n_ctx tokens (split streams,
    or one shared buffer of n_ctx cells when unified); swa_full=False: window layers keep the window."""
    size = _pad(n_ctx)
    swa_layers = shape.n_layer_swa if shape.n_swa and not swa_full else 0
    window = _pad(min(size, shape.n_swa * (n_seq if unified else 1) + n_ubatch))
    streams = 1 if unified else n_seq
    return streams * _layer_bytes(shape, kv_type) * ((shape.n_layer - swa_layers) * size + swa_layers * window)


def mem_available() -> Optional[int]:
    """Bytes of memory available now: MemAvailable of /proc/meminfo, else psutil's; None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # psutil missing or unsupported here
        return None


def env_available() -> Optional[int]:
    """LA_EDGE_MEM_AVAILABLE (bytes or a size) when set, else mem_available(): lets tests and users
    state the memory that `auto` shares."""
    given = os.environ.get("LA_EDGE_MEM_AVAILABLE")
    if given:
        size = parse_size(given)
        if size != AUTO:
            return size
    return mem_available()


def resolve_budget(value: Union[None, str, int], available: Optional[Callable[[], Optional[int]]] = None,
                   share: float = AUTO_SHARE) -> Optional[int]:
    """Bytes for a --kv-budget value: None stays None (no budget); "auto" is `share` of `available()`
    (default: env_available; None when the platform does not say)."""
    if value is None:
        return None
    size = parse_size(value)
    if size != AUTO:
        return size
    free = (available or env_available)()
    return None if free is None else int(free * share)


@dataclass(frozen=True)
class KvPlan:
    """What the KV cache will hold: max_requests x max_branches sequences of n_ctx cells, `bytes` in all.

    budget: the bytes it had to fit (None: none given); warning: why an explicit choice exceeds it.
    """

    max_requests: int
    max_branches: int
    n_ctx: int
    kv_type: str
    bytes: int
    cell_bytes: int
    budget: Optional[int] = None
    warning: Optional[str] = None
    unified: bool = False  # one buffer of n_ctx cells shared by every sequence

    @property
    def n_seq(self) -> int:
        return self.max_requests * self.max_branches

    @property
    def cells(self) -> int:
        """Cells: sequences x the context rounded up to 256 (unified: the context alone)."""
        return _pad(self.n_ctx) * (1 if self.unified else self.n_seq)

    def describe(self) -> str:
        """The choice in words, for startup lines and logs."""
        budget = "no budget" if self.budget is None else f"budget {format_size(self.budget)}"
        r, b = self.max_requests, self.max_branches
        return (f"KV cache {self.kv_type}, {format_size(self.cell_bytes)} per cell: {r} request{'s' * (r != 1)} x "
                f"{b} branch{'es' * (b != 1)} x {self.n_ctx} tokens = {self.cells:,} cells, "
                f"{format_size(self.bytes)} ({budget})")

    def as_dict(self) -> dict:
        return {"max_requests": self.max_requests, "max_branches": self.max_branches, "n_ctx": self.n_ctx,
                "kv_type": self.kv_type, "kv_bytes": self.bytes, "kv_bytes_per_cell": self.cell_bytes,
                "cells": self.cells, "budget_bytes": self.budget, "warning": self.warning}


def plan(budget: Optional[int], shape: KvShape, kv_type: str, want_requests: int, want_branches: int,
         want_ctx: int, fixed: Sequence[str] = (), n_ubatch: int = 512, unified: bool = False) -> KvPlan:
    """The largest choice that fits `budget` bytes, sacrificing requests, then branches (never below
    2), then context (never below MIN_CTX); `fixed` names "max_requests" / "n_ctx" not to change.

    Raises MemoryBudgetError (saying what would fit) when one request of two branches does not fit
    and max_requests is not fixed; with max_requests fixed the plan carries a warning instead.
    """
    _check_type(kv_type)
    unknown = set(fixed) - {"max_requests", "n_ctx"}
    if unknown:
        raise InvalidParameterError(f"fixed may name max_requests and n_ctx, not {sorted(unknown)}")

    def cost(r: int, b: int, c: int) -> int:
        return kv_bytes(shape, kv_type, r * b, c, n_ubatch, unified)

    def made(r: int, b: int, c: int, warning: Optional[str] = None) -> KvPlan:
        return KvPlan(r, b, c, kv_type, cost(r, b, c), cell_bytes(shape, kv_type), budget, warning, unified)

    if budget is None:
        return made(want_requests, want_branches, want_ctx)
    r_min = want_requests if "max_requests" in fixed else 1
    b_min = min(2, want_branches)
    c_min = want_ctx if "n_ctx" in fixed else min(want_ctx, MIN_CTX)
    for r in range(want_requests, r_min - 1, -1):
        if cost(r, want_branches, want_ctx) <= budget:
            return made(r, want_branches, want_ctx)
    for b in range(want_branches - 1, b_min - 1, -1):
        if cost(r_min, b, want_ctx) <= budget:
            return made(r_min, b, want_ctx)
    c = _largest_ctx(lambda n: cost(r_min, b_min, n) <= budget, c_min, want_ctx)
    if c is not None:
        return made(r_min, b_min, c)
    need = cost(r_min, b_min, c_min)
    if "max_requests" in fixed:
        return made(r_min, b_min, c_min, f"the KV cache needs {format_size(need)} for max_requests={r_min} x "
                                         f"{b_min} branches x n_ctx={c_min}, over the budget of "
                                         f"{format_size(budget)} (the explicit values win)")
    fits = _largest_ctx(lambda n: cost(1, b_min, n) <= budget, PAD, c_min)
    hints = [f"raise --kv-budget to {format_size(need)}"]
    if fits is not None:
        hints.append(f"lower --n-ctx to {fits} (fits this budget)")
    for other in ("q8_0", "q4_0")[("q8_0", "q4_0").index(kv_type) + 1 if kv_type != "f16" else 0:]:
        small = kv_bytes(shape, other, b_min, c_min, n_ubatch, unified)
        if small <= budget:
            hints.append(f"use --kv-type {other} ({format_size(small)})")
            break
    raise MemoryBudgetError(
        f"--kv-budget {format_size(budget)} cannot hold one request of {b_min} branches at n_ctx={c_min}: that "
        f"needs {format_size(need)} of {kv_type} KV cache ({format_size(cell_bytes(shape, kv_type))} per cell); "
        + ", or ".join(hints))


def _largest_ctx(fits: Callable[[int], bool], lo: int, hi: int) -> Optional[int]:
    """The largest context in [lo, hi] (hi itself, else a multiple of 256) for which fits() holds."""
    if fits(hi):
        return hi
    n = (hi - 1) // PAD * PAD
    while n >= lo and n > 0:
        if fits(n):
            return n
        n -= PAD
    return None
