"""Pure math of Linear Alignment decoding: the NumPy reference (the specification).

Order of a step over K rows and a `Combination`: the base row b (z_P for Linear Alignment); the
plausibility nucleus of softmax(b / T_m) (always from the unpenalised b); the adaptive scale s_t
when asked for; the bans; the aligned z = b + sum_k guide_k s_t (z_k - z_ref) over the nucleus in
float32 (see combination.py); penalties on z; then greedy argmax, or top-k -> top-p -> min-p ->
temperature -> seeded draw, all restricted to the nucleus.
Bans: -inf at token t in any row that enters with a nonzero weight bans t. In a mixed row it makes
b[t] = -inf (outside the nucleus); in a guiding row (guide_k s_t != 0), or in the plain row z_ref
while any row guides, it removes t from the nucleus before z is formed (z_P + r (z_P - (-inf))
would be +inf and force t): t is never chosen nor listed in top_logprobs. An all -inf base row,
or a nucleus left empty, raises AllTokensBannedError. NaN and +inf in a row stay errors.
Candidates are ordered by value descending, ties by token id ascending (a nucleus of the whole
vocabulary stays in id order). Sums run sequentially in candidate order, except totals over the
whole vocabulary (the nucleus mass, s_t), which are `mass_total` (fixed chunk/lane order in
token-id order, so the native sampler needs no full sort). Weights
use `exp2_weights`, a portable IEEE-exact exp, and logprobs and s_t use `log_exact`, a portable log:
native/la_sampler.c reproduces both bit for bit.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

from ..errors import AllTokensBannedError, InvalidParameterError, NonFiniteLogitsError
from .combination import Combination
from .params import GenerationParams
from .rng import SplitMix64


@dataclass(frozen=True)
class Choice:
    """The chosen token; logprob/top are filled only when asked for."""

    token: int
    logprob: Optional[float] = None
    top: Tuple[Tuple[int, float], ...] = ()
    nucleus_size: int = 0
    ratio_scale: float = 1.0  # s_t of an adaptive combination, else 1 (step.choose sets 0 under the ratio guard)


def check_finite(row: np.ndarray, name: str) -> None:
    """Raise NonFiniteLogitsError if the row holds NaN or +inf (-inf is allowed: a banned token)."""
    if np.isnan(row).any() or np.isposinf(row).any():
        raise NonFiniteLogitsError(f"{name} logits hold NaN or +inf; refusing to sample")


def base_row(rows: Sequence[np.ndarray], combo: Combination) -> np.ndarray:
    """b = sum_k mix[k] z_k in float32, in index order; the row itself when one weight is 1."""
    used = [k for k, m in enumerate(combo.mix) if m != 0.0]
    if len(used) == 1 and combo.mix[used[0]] == 1.0:
        return rows[used[0]]
    with np.errstate(invalid="ignore", over="ignore"):
        b = np.float32(combo.mix[used[0]]) * rows[used[0]]
        for k in used[1:]:
            b = b + np.float32(combo.mix[k]) * rows[k]
    if np.isnan(b).any() or np.isposinf(b).any():
        raise NonFiniteLogitsError("the mixed base row overflowed to NaN or +inf; refusing to sample")
    return b


def guided(b: np.ndarray, rows: Sequence[np.ndarray], combo: Combination, ids: np.ndarray,
           scale: float = 1.0) -> np.ndarray:
    """z = b + sum_k f32(guide[k]*scale) (z_k - z_ref) over ids, in float32 and index order."""
    z = b[ids]
    with np.errstate(invalid="ignore", over="ignore"):
        for k, g in enumerate(combo.guide):
            if g * scale != 0.0:
                z = z + np.float32(g * scale) * (rows[k][ids] - rows[combo.ref][ids])
    return z


BASE_BANNED = "every token is banned: the base row is all -inf; nothing to sample"
NUCLEUS_BANNED = ("every token of the nucleus is banned: each is -inf in a guiding row or in the plain row; "
                  "nothing to sample")


def banned(rows: Sequence[np.ndarray], combo: Combination, ids: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Mask over ids: True where a guiding row (guide[k] * scale != 0), or the plain row while any row
    guides, is -inf (a mixed row needs no mask: its -inf makes b -inf, outside the nucleus)."""
    guiding = [k for k, g in enumerate(combo.guide) if g * scale != 0.0]
    out = np.zeros(ids.size, dtype=bool)
    for k in guiding + [combo.ref] * bool(guiding):
        out |= rows[k][ids] == -np.inf
    return out


def order_desc(values: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Indices of `ids` sorted by values descending, ties by id ascending."""
    return np.lexsort((ids, -values.astype(np.float64)))


_LOG2E = float.fromhex("0x1.71547652b82fep+0")
_SHIFT = float.fromhex("0x1.8p52") + 2048.0  # rounds y to an integer n; low bits hold n + 2048
_Y_MIN = -1100.0  # 2^y underflows to 0 well above this
_EXP2_POLY = tuple(float.fromhex(h) for h in (
    "0x1.0000000000000p+0", "0x1.62e42fefa39efp-1", "0x1.ebfbdff82c5a8p-3", "0x1.c6b08d7049fd0p-5",
    "0x1.3b2ab6fba0114p-7", "0x1.5d87fe78d1630p-10", "0x1.4309130ed70c0p-13", "0x1.ffcbfba7e1000p-17",
    "0x1.62bfc7ad6e400p-20", "0x1.b526641400000p-24", "0x1.e61b102460000p-28", "0x1.e7e123ea00000p-32",
))
MASS_CHUNK = 8192
MASS_LANES = 16


def exp2_weights(d: np.ndarray, temperature: float) -> np.ndarray:
    """exp(d/T) for d = v - max <= 0, as 2^(d*log2e/T) with a degree-11 polynomial (< 2 ulp).

    Only IEEE +, -, * and bit operations, so native/la_sampler.c gives identical bits.
    """
    c = min(_LOG2E / temperature, sys.float_info.max)
    dlo = _Y_MIN / c
    y = np.where(d > dlo, d, dlo) * c
    kd = y + _SHIFT
    f = y - (kd - _SHIFT)
    p = np.full_like(y, _EXP2_POLY[-1])
    for coef in _EXP2_POLY[-2::-1]:
        p = p * f + coef
    m = kd.view(np.uint64) & np.uint64(0xFFFFF)
    h = m >> np.uint64(1)
    s1 = ((h - np.uint64(1)) << np.uint64(52)).view(np.float64)
    s2 = ((m - h - np.uint64(1)) << np.uint64(52)).view(np.float64)
    return p * s1 * s2


def mass_total(w: np.ndarray) -> float:
    """Sum of w in a fixed order: per chunk of MASS_CHUNK, MASS_LANES sequential lane sums
    (element i in lane i % MASS_LANES) folded as a halving tree; then chunks in sequence."""
    w = np.asarray(w, dtype=np.float64)
    pad = (-w.size) % MASS_CHUNK
    blocks = np.concatenate([w, np.zeros(pad)]).reshape(-1, MASS_CHUNK // MASS_LANES, MASS_LANES)
    lanes = np.add.accumulate(blocks, axis=1)[:, -1, :]
    width = MASS_LANES // 2
    while width:
        lanes = lanes[:, :width] + lanes[:, width:2 * width]
        width //= 2
    return float(np.add.accumulate(lanes[:, 0])[-1])


def relative_weights(values: np.ndarray, temperature: float) -> np.ndarray:
    """exp((v - max)/T) in float64 (via exp2_weights); +inf maxima get weight 1 each, others 0."""
    v = values.astype(np.float64)
    top = v.max()
    if top == np.inf:
        return (v == np.inf).astype(np.float64)
    if top == -np.inf:
        return np.zeros_like(v)
    return exp2_weights(v - top, temperature)


_LN_POLY = tuple(float.fromhex(h) for h in (  # fdlibm's log kernel, Lg1..Lg7
    "0x1.5555555555593p-1", "0x1.999999997fa04p-2", "0x1.2492494229359p-2", "0x1.c71c51d8e78afp-3",
    "0x1.7466496cb03dep-3", "0x1.39a09d078c69fp-3", "0x1.2f112df3e5244p-3",
))
_LN2_HI, _LN2_LO = float.fromhex("0x1.62e42fee00000p-1"), float.fromhex("0x1.a39ef35793c76p-33")
_SQRT2 = float.fromhex("0x1.6a09e667f3bcdp+0")


def log_exact(x: np.ndarray) -> np.ndarray:
    """Natural log of positive finite doubles, fdlibm's algorithm (< 1 ulp).

    Only IEEE +, -, *, / and bit operations, so native/la_sampler.c gives identical bits.
    """
    x = np.asarray(x, dtype=np.float64)
    small = x < 2.0 ** -1022  # subnormal: scale up by 2^54 first
    with np.errstate(over="ignore"):
        x = np.where(small, x * 2.0 ** 54, x)
    bits = x.view(np.uint64)
    e = (bits >> np.uint64(52)).astype(np.int64) - np.where(small, 1023 + 54, 1023)
    m = ((bits & np.uint64(0xFFFFFFFFFFFFF)) | np.uint64(0x3FF0000000000000)).view(np.float64)
    big = m >= _SQRT2  # m in [sqrt(2)/2, sqrt(2))
    m = np.where(big, m * 0.5, m)
    k = (e + big).astype(np.float64)
    f = m - 1.0
    s = f / (2.0 + f)
    z = s * s
    r = np.full_like(z, _LN_POLY[-1])
    for coef in _LN_POLY[-2::-1]:
        r = r * z + coef
    hfsq = 0.5 * f * f
    return k * _LN2_HI - ((hfsq - (s * (hfsq + z * r) + k * _LN2_LO)) - f)


def jsd_bits(b: np.ndarray, ref: np.ndarray, temperature: float) -> float:
    """JSD(softmax(b/T) || softmax(ref/T)) in bits, clamped to [0, 1]; 1 when a row is all -inf.

    Float64: p = w_b * (1 / total_b) by relative_weights and mass_total (q alike); the per-token
    terms p ln((p + p) / (p + q)) + q ln((q + q) / (p + q)) (0 where p, q is 0) summed by
    mass_total; then times 0.5 * log2(e).
    """
    wb, wr = relative_weights(b, temperature), relative_weights(ref, temperature)
    sb, sr = mass_total(wb), mass_total(wr)
    if not (sb > 0 and sr > 0):
        return 1.0
    p, q = wb * (1.0 / sb), wr * (1.0 / sr)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = p + q
        t = np.where(p > 0, p * log_exact((p + p) / s), 0.0) + np.where(q > 0, q * log_exact((q + q) / s), 0.0)
    j = 0.5 * mass_total(t) * _LOG2E  # nats to bits
    return min(j, 1.0) if j > 0 else 0.0


def nucleus_count(weights_sorted: np.ndarray, top_p: float, total: Optional[float] = None) -> int:
    """How many leading tokens keep: token j stays iff the mass ranked above it < top_p*total.

    total defaults to the sequential sum of weights_sorted.
    """
    if top_p >= 1.0:
        return int(np.count_nonzero(weights_sorted > 0)) or 1
    cum = np.cumsum(weights_sorted)
    if total is None:
        total = cum[-1]
    above = np.concatenate(([0.0], cum[:-1]))
    keep = int(np.count_nonzero(above < top_p * total))
    nonzero = int(np.count_nonzero(weights_sorted > 0))
    return max(1, min(keep, nonzero))


def plausibility_mask(z_p: np.ndarray, top_p: float, temperature: float, min_p: float = 0.0) -> np.ndarray:
    """Token ids of the nucleus of softmax(z_P/T_m) (z_P: the base row b), ordered by z_P descending,
    less those whose weight relative to the top token is below min_p.

    The whole vocabulary (top_p = 1, no zero weight) stays in id order: the C sampler never sorts it.
    """
    ids = np.arange(z_p.shape[0])
    w = relative_weights(z_p, temperature)
    order = order_desc(z_p, ids)
    total = mass_total(w) if top_p < 1.0 else None
    count = nucleus_count(w[order], top_p, total)
    kept = ids if top_p >= 1.0 and count == ids.size else ids[order[:count]]
    return kept[w[kept] >= min_p] if min_p > 0.0 else kept


def apply_penalties(z: np.ndarray, ids: np.ndarray, history: Sequence[int], p: GenerationParams) -> np.ndarray:
    """llama.cpp-style repeat / frequency / presence penalties over the last repeat_last_n tokens."""
    if not history or p.repeat_last_n == 0 or (
        p.repeat_penalty == 1.0 and p.frequency_penalty == 0.0 and p.presence_penalty == 0.0
    ):
        return z
    recent = np.asarray(history[-p.repeat_last_n:], dtype=np.int64)
    counts = np.bincount(recent, minlength=int(max(recent.max(), ids.max())) + 1)[ids]
    z = z.copy()
    seen = counts > 0
    rp = np.float32(p.repeat_penalty)
    with np.errstate(over="ignore"):
        z[seen] = np.where(z[seen] > 0, z[seen] / rp, z[seen] * rp)
        z -= (counts * np.float32(p.frequency_penalty) + seen * np.float32(p.presence_penalty)).astype(np.float32)
    return z


def _logprobs(z_kept: np.ndarray, ids: np.ndarray, token: int, temperature: float, n: int):
    # Aligned distribution after penalties: softmax(z / T) over the kept tokens (T = 1 when greedy).
    t = temperature if temperature > 0 else 1.0
    w = relative_weights(z_kept, t)
    total = float(np.cumsum(w)[-1]) if w.size else 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        lp = np.where(w > 0, log_exact(w) - log_exact(total), -np.inf) if total > 0 else np.full_like(w, -np.inf)
    chosen = float(lp[np.nonzero(ids == token)[0][0]])
    top = ()
    if n:
        # By weight (then id): log rounding cannot reorder or tie alternatives.
        order = np.lexsort((ids, -w))[:n]
        top = tuple((int(ids[i]), float(lp[i])) for i in order)
    return chosen, top


def choose_rows(
    rows: Sequence[np.ndarray],
    combo: Combination,
    params: GenerationParams,
    rng: Optional[SplitMix64] = None,
    history: Sequence[int] = (),
    check: bool = True,
) -> Choice:
    """One decision from K logits rows combined by `combo` (the NumPy reference path).

    history (generated ids) feeds the penalties, greedy or not; rng is needed only when sampling.
    """
    rows = tuple(np.asarray(r, dtype=np.float32) for r in rows)
    if len(rows) != combo.k:
        raise InvalidParameterError(f"{len(rows)} logits rows for a combination of {combo.k} branches")
    if any(r.ndim != 1 or r.shape != rows[0].shape for r in rows):
        raise InvalidParameterError("logits rows must be 1-D and of the same length")
    if check:
        for k, row in enumerate(rows):
            check_finite(row, f"branch {k} ({combo.role(k)})")
    b = base_row(rows, combo)
    if not (b > -np.inf).any():
        raise AllTokensBannedError(BASE_BANNED)
    nucleus = plausibility_mask(b, params.plausibility_top_p, params.mask_temperature, params.plausibility_min_p)
    scale = jsd_bits(b, rows[combo.ref], params.mask_temperature) if combo.adaptive else 1.0
    allowed = nucleus[~banned(rows, combo, nucleus, scale)]
    if allowed.size == 0:
        raise AllTokensBannedError(NUCLEUS_BANNED)
    z = guided(b, rows, combo, allowed, scale)
    z = np.where(np.isnan(z), np.float32(-np.inf), z)  # NaN (inf - inf of overflows) is -inf; +/-inf stay
    z = apply_penalties(z, allowed, history, params)
    if params.greedy:
        token = int(allowed[order_desc(z, allowed)[0]])
        ids, kept = allowed, z
    else:
        if rng is None:
            raise ValueError("sampling needs an rng")
        ids, kept = _filtered(z, allowed, params)
        token = _draw(kept, ids, params.temperature, rng)
        if token < 0:
            # Every aligned value overflowed to -inf: draw from softmax(b / T_m) over the same tokens
            # (b is finite there, so its maximum has weight 1 and the draw succeeds).
            ids = allowed[order_desc(b[allowed], allowed)]
            kept = b[ids]
            token = _draw(kept, ids, params.mask_temperature, rng)
    logprob, top = _logprobs(kept, ids, token, params.temperature, params.top_logprobs)
    return Choice(token=token, logprob=logprob, top=top, nucleus_size=int(nucleus.size), ratio_scale=scale)


def _filtered(z: np.ndarray, ids: np.ndarray, p: GenerationParams):
    """top-k -> top-p -> min-p over penalised z; returns (ids, values) ordered by value desc."""
    order = order_desc(z, ids)
    ids, z = ids[order], z[order]
    if p.top_k > 0:
        ids, z = ids[: p.top_k], z[: p.top_k]
    if p.top_p < 1.0:
        n = nucleus_count(relative_weights(z, 1.0), p.top_p)
        ids, z = ids[:n], z[:n]
    if p.min_p > 0.0:
        w = relative_weights(z, 1.0)
        n = max(1, int(np.count_nonzero(w >= p.min_p)))
        ids, z = ids[:n], z[:n]
    return ids, z


def _draw(values: np.ndarray, ids: np.ndarray, temperature: float, rng: SplitMix64) -> int:
    """Inverse-CDF draw over values (ordered desc) at temperature; -1 if all weights are zero."""
    w = relative_weights(values, temperature)
    cum = np.cumsum(w)
    total = cum[-1]
    if not total > 0:
        return -1
    target = rng.uniform() * total
    j = int(np.searchsorted(cum, target, side="right"))
    if j >= ids.size:
        j = int(np.nonzero(w > 0)[0][-1])
    return int(ids[j])
