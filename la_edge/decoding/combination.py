"""How K logits rows combine into the aligned logits (pure data, validated once).

Base row:    b = sum_k mix[k] z_k         (mix >= 0, sums to 1; b also defines the nucleus,
                                           the top-p of softmax(b / T_m))
Aligned:     z = b + sum_k guide[k] s_t (z_k - z_ref)   over the nucleus ids
Adaptive:    s_t = JSD(softmax(b / T_m) || softmax(z_ref / T_m)) in bits (in [0, 1]); else s_t = 1.

Float32, no FMA, fixed order: b is the row itself when one mix weight is nonzero and equals 1;
else b = f32(mix[k0]) z_k0, then b = b + f32(mix[k]) z_k over the next nonzero k in index order.
Then z = b; for k in index order with guide[k] s_t != 0: z = z + f32(guide[k] s_t) (z_k - z_ref).
Linear Alignment is K = 2: mix (1, 0), guide (r, 0), ref 1, i.e. z = z_P + r (z_P - z_0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Optional, Sequence, Tuple

from ..errors import InvalidParameterError
from .params import RATIO_MAX, RATIO_MIN

MAX_BRANCHES = 16  # the C sampler's LA_MAX_BRANCHES
MIX_MIN = 1e-30  # smaller nonzero weights would round to 0 in float32 (and 0 * -inf is NaN)


def _number(name: str, value) -> float:
    try:  # float() of an integer beyond the float range raises OverflowError
        ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(float(value))
    except OverflowError:
        ok = False
    if not ok:
        raise InvalidParameterError(f"{name} must be a finite number, got {str(value)[:40]!r}")
    return float(value)


def _floats(name: str, values: Sequence[float]) -> Tuple[float, ...]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise InvalidParameterError(f"{name} must be a sequence of numbers, got {type(values).__name__}")
    return tuple(_number(f"{name}[{i}]", v) for i, v in enumerate(values))


def normalise_weights(weights: Sequence[float], fail: Callable[[int, str], Exception]) -> Tuple[float, ...]:
    """Nonnegative finite weights (the largest > 0) divided by their sum, without overflow.

    The weights are first scaled by a power of two (exact), so the result is bit-identical to
    w / fsum(w) whenever that sum is finite. A nonzero weight below MIX_MIN of the sum would round
    to 0 in float32: it is refused, never silently dropped, by raising fail(i, message) for the
    first such index i (the caller names its own field: `weights[i]`, `principles[i].weight`).
    """
    shift = -math.frexp(max(weights))[1]
    scaled = [math.ldexp(x, shift) for x in weights]
    total = math.fsum(scaled)
    out = tuple(x / total for x in scaled)
    for i, (x, w) in enumerate(zip(weights, out)):
        if x > 0 and w < MIX_MIN:
            need = math.ldexp(MIX_MIN * total * 1.01, -shift)
            raise fail(i, f"is {x:g}, less than {MIX_MIN:g} of the weights' sum, so it would round to 0 in "
                          f"float32; raise it to at least {need:.3g}, or set it to 0 to drop that principle")
    return out


def _ratio(name: str, value: float, low: float = RATIO_MIN) -> float:
    v = _number(name, value)
    if not low <= v <= RATIO_MAX:
        raise InvalidParameterError(f"{name} must be in [{low:g}, {RATIO_MAX:g}] (0 = no guidance), got {v:g}")
    return v


def check_cfg_scale(value) -> float:
    """A classifier-free guidance scale g: a finite number in [1, 1 + RATIO_MAX] (1 = no guidance);
    its branch is pushed at g - 1."""
    v = _number("cfg_scale", value)
    if not 1.0 <= v <= 1.0 + RATIO_MAX:
        raise InvalidParameterError(f"cfg_scale must be in [1, {1 + RATIO_MAX:g}] (1 = no guidance), got {v:g}")
    return v


@dataclass(frozen=True)
class Combination:
    """Weights over K branches: `mix` (the base row), `guide` (relative to branch `ref`).

    ref is the plain branch's index (None only when every guide is 0); adaptive scales every
    guide by s_t (see the module docstring). Build with plain(), linear_alignment() or compose().
    """

    mix: Tuple[float, ...]
    guide: Tuple[float, ...]
    ref: Optional[int] = None
    adaptive: bool = False

    def __post_init__(self) -> None:
        mix, guide = _floats("mix", self.mix), _floats("guide", self.guide)
        if not 1 <= len(mix) <= MAX_BRANCHES:
            raise InvalidParameterError(f"a combination needs 1 to {MAX_BRANCHES} branches, got {len(mix)}")
        if len(guide) != len(mix):
            raise InvalidParameterError(f"guide has {len(guide)} weights but mix has {len(mix)}; give one per branch")
        bad = [i for i, m in enumerate(mix) if m < 0 or 0 < m < MIX_MIN] or [i for i, m in enumerate(mix) if m > 1]
        if bad:  # checked before the sum, which weights above 1 could overflow
            raise InvalidParameterError(f"mix[{bad[0]}] must be 0 or in [{MIX_MIN:g}, 1], got {mix[bad[0]]:g}")
        if abs(math.fsum(mix) - 1.0) > 1e-9:
            raise InvalidParameterError(f"mix weights must sum to 1 (normalise them), got {math.fsum(mix):.12g}")
        ref = self.ref
        if ref is not None:
            if isinstance(ref, bool) or not isinstance(ref, int) or not 0 <= ref < len(mix):
                raise InvalidParameterError(f"ref must be a branch index in [0, {len(mix) - 1}] or None, got {ref!r}")
            if guide[ref] != 0.0:
                raise InvalidParameterError(
                    f"guide[ref] must be 0 (the plain branch guides nothing), got {guide[ref]:g}")
        elif any(guide):
            raise InvalidParameterError("nonzero guide weights need ref, the plain branch they are relative to")
        if not isinstance(self.adaptive, bool):
            raise InvalidParameterError("adaptive must be true or false")
        if self.adaptive and ref is None:
            raise InvalidParameterError("adaptive needs ref, the plain branch its ratio compares against")
        object.__setattr__(self, "mix", mix)
        object.__setattr__(self, "guide", guide)

    @property
    def k(self) -> int:
        """The number of branches (logits rows)."""
        return len(self.mix)

    @property
    def guided(self) -> bool:
        """True when some guide weight is nonzero."""
        return any(self.guide)

    def scaled(self, factor: float) -> "Combination":
        """The same combination with every guide weight times `factor` (0: the base row alone)."""
        return Combination(self.mix, tuple(g * factor for g in self.guide), self.ref, self.adaptive)

    def role(self, k: int) -> str:
        """'plain' for ref, 'avoid' for a pure negative guide, else 'principled' (for messages)."""
        if k == self.ref:
            return "plain"
        return "avoid" if self.mix[k] == 0.0 and self.guide[k] < 0.0 else "principled"

    @classmethod
    def plain(cls) -> "Combination":
        """One branch decoded as is (K = 1)."""
        return _PLAIN

    @classmethod
    def linear_alignment(cls, ratio: float) -> "Combination":
        """Linear Alignment over (principled, plain): z = z_P + r (z_P - z_0)."""
        return _linear_alignment(_ratio("ratio", ratio))

    @classmethod
    def compose(cls, ratios: Sequence[float], weights: Optional[Sequence[float]] = None,
                avoid_ratios: Sequence[float] = (), adaptive: bool = False) -> "Combination":
        """Branches [P_1..P_n, N_1..N_m, plain]: principles mixed by `weights` (default equal,
        normalised), each guided by w_i r_i; each avoided prompt pushed away by its ratio s_j.
        With no principle (n = 0) the plain branch is the base: z = z_0 - sum_j s_j (z_Nj - z_0),
        classifier-free guidance away from negative prompts (cfg_scale = 1 + s).

        Any finite weights >= 0 normalise (even near the float maximum); a nonzero weight below
        MIX_MIN of their sum is refused naming `weights[i]` (see normalise_weights)."""
        ratios = tuple(_ratio(f"ratios[{i}]", r) for i, r in enumerate(_floats("ratios", ratios)))
        avoid = tuple(_ratio(f"avoid_ratios[{j}]", s, 0.0)
                      for j, s in enumerate(_floats("avoid_ratios", avoid_ratios)))
        if not ratios and not avoid:
            raise InvalidParameterError("compose needs at least one principle ratio or one avoid ratio")
        if not ratios:
            if weights:
                raise InvalidParameterError(f"{len(weights)} weights for 0 principles; give one weight each")
            return cls((0.0,) * len(avoid) + (1.0,), tuple(-s for s in avoid) + (0.0,), len(avoid), adaptive)
        w = (1.0,) * len(ratios) if weights is None else _floats("weights", weights)
        if len(w) != len(ratios):
            raise InvalidParameterError(f"{len(w)} weights for {len(ratios)} principles; give one weight each")
        if any(x < 0 for x in w) or not max(w) > 0:
            raise InvalidParameterError("each weight must be >= 0 and the weights must sum to more than 0")
        w = normalise_weights(w, lambda i, message: InvalidParameterError(f"weights[{i}] {message}"))
        guide = tuple(x * r for x, r in zip(w, ratios)) + tuple(-s for s in avoid) + (0.0,)
        return cls(w + (0.0,) * (len(avoid) + 1), guide, len(ratios) + len(avoid), adaptive)


_PLAIN = Combination((1.0,), (0.0,), None)


@lru_cache(maxsize=256)
def _linear_alignment(ratio: float) -> Combination:
    return Combination((1.0, 0.0), (ratio, 0.0), 1)
