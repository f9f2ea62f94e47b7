"""One frozen, validated parameters object for alignment and sampling."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Optional, Tuple

from ..errors import InvalidParameterError

RATIO_MIN = -1.0  # r = -1 gives plain decoding of the principle-free prompt
RATIO_MAX = 100.0  # beyond this the combination only amplifies noise
TEMPERATURE_MAX = 100.0
# Stop strings are checked against every token's text; these bounds keep that cost small and fixed.
MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 512  # characters of one stop string


def _finite(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidParameterError(f"{name} must be a number, got {type(value).__name__}")
    try:
        value = float(value)
    except OverflowError:  # an integer beyond the float range (a hostile JSON body)
        raise InvalidParameterError(f"{name} must be finite, got an integer of {len(str(value))} digits") from None
    if not math.isfinite(value):
        raise InvalidParameterError(f"{name} must be finite, got {value}")
    return value


def _integer(name: str, value: int, low: int, high: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParameterError(f"{name} must be an integer, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise InvalidParameterError(f"{name} must be in {bound}, got {value}")
    return value


def _stop_strings(stop) -> Tuple[str, ...]:
    """`stop` as a tuple: None, one string, or a list / tuple of at most MAX_STOP_STRINGS non-empty
    strings of at most MAX_STOP_LENGTH characters each."""
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, (list, tuple)):
        raise InvalidParameterError(f"stop must be a string or a list of strings, got {type(stop).__name__}")
    if len(stop) > MAX_STOP_STRINGS:
        raise InvalidParameterError(f"stop: at most {MAX_STOP_STRINGS} stop strings, got {len(stop)}")
    for s in stop:
        if not isinstance(s, str) or not s:
            raise InvalidParameterError("stop: each stop string must be a non-empty string")
        if len(s) > MAX_STOP_LENGTH:
            raise InvalidParameterError(f"stop: each stop string must be at most {MAX_STOP_LENGTH} characters, "
                                        f"got one of {len(s)}")
    return tuple(stop)


@dataclass(frozen=True)
class GenerationParams:
    """Alignment and sampling settings, validated once on construction.

    ratio: r in z = z_P + r*(z_P - z_0); 0 is plain principled decoding; bounded to [-1, 100].
    temperature: 0 means greedy. plausibility_top_p / plausibility_temperature define the
    nucleus of softmax(z_P / T_m) that every chosen token must lie in (T_m defaults to T, or 1
    when T = 0); plausibility_min_p also drops tokens below that share of the top token's
    probability (contrastive decoding's alpha). top_k / top_p / min_p and the penalties default to
    off. timeout: seconds from submission after which the request ends with RequestTimeoutError
    (None = no deadline).
    stop: up to MAX_STOP_STRINGS (16) non-empty strings of at most MAX_STOP_LENGTH (512) characters.
    ratio_guard: drop the guidance (r -> 0) while the answer repeats itself (decoding/strength.py).
    """

    ratio: float = 2.0
    temperature: float = 0.7
    plausibility_top_p: float = 0.8
    plausibility_temperature: Optional[float] = None
    plausibility_min_p: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repeat_last_n: int = 64
    seed: Optional[int] = None
    max_tokens: int = 256
    stop: Tuple[str, ...] = field(default_factory=tuple)
    top_logprobs: int = 0
    ignore_eos: bool = False
    timeout: Optional[float] = None
    ratio_guard: bool = False

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        r = _finite("ratio", self.ratio)
        if not RATIO_MIN <= r <= RATIO_MAX:
            raise InvalidParameterError(
                f"ratio must be in [{RATIO_MIN:g}, {RATIO_MAX:g}] (0 = principled prompt only, "
                f"the paper uses 0..10), got {r:g}"
            )
        set_("ratio", r)
        t = _finite("temperature", self.temperature)
        if not 0.0 <= t <= TEMPERATURE_MAX:
            raise InvalidParameterError(f"temperature must be in [0, {TEMPERATURE_MAX:g}] (0 = greedy), got {t:g}")
        set_("temperature", t)
        set_("plausibility_top_p", self._unit_open("plausibility_top_p", self.plausibility_top_p))
        if self.plausibility_temperature is not None:
            tm = _finite("plausibility_temperature", self.plausibility_temperature)
            if not 0.0 < tm <= TEMPERATURE_MAX:
                raise InvalidParameterError(
                    f"plausibility_temperature must be in (0, {TEMPERATURE_MAX:g}], got {tm:g}")
            set_("plausibility_temperature", tm)
        pm = _finite("plausibility_min_p", self.plausibility_min_p)
        if not 0.0 <= pm <= 1.0:
            raise InvalidParameterError(f"plausibility_min_p must be in [0, 1] (0 = off), got {pm:g}")
        set_("plausibility_min_p", pm)
        set_("top_k", _integer("top_k", self.top_k, 0, 2**31 - 1))  # the C sampler's int32
        set_("top_p", self._unit_open("top_p", self.top_p))
        mp = _finite("min_p", self.min_p)
        if not 0.0 <= mp <= 1.0:
            raise InvalidParameterError(f"min_p must be in [0, 1] (0 = off), got {mp:g}")
        set_("min_p", mp)
        rp = _finite("repeat_penalty", self.repeat_penalty)
        if not 0.0 < rp <= 10.0:
            raise InvalidParameterError(f"repeat_penalty must be in (0, 10] (1 = off), got {rp:g}")
        set_("repeat_penalty", rp)
        for name in ("frequency_penalty", "presence_penalty"):
            v = _finite(name, getattr(self, name))
            if not -2.0 <= v <= 2.0:
                raise InvalidParameterError(f"{name} must be in [-2, 2] (0 = off), got {v:g}")
            set_(name, v)
        set_("repeat_last_n", _integer("repeat_last_n", self.repeat_last_n, 0, 1 << 20))
        if self.seed is not None:
            set_("seed", _integer("seed", self.seed, 0, (1 << 64) - 1))
        set_("max_tokens", _integer("max_tokens", self.max_tokens, 1, 1 << 20))
        set_("top_logprobs", _integer("top_logprobs", self.top_logprobs, 0, 20))
        for name in ("ignore_eos", "ratio_guard"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidParameterError(f"{name} must be true or false")
        if self.timeout is not None:
            to = self.timeout
            if isinstance(to, bool) or not isinstance(to, (int, float)) or not (math.isfinite(to) and to > 0):
                raise InvalidParameterError(f"timeout must be a finite number of seconds > 0 (omit it, or None, "
                                            f"for no deadline), got {to!r}")
            set_("timeout", float(to))
        set_("stop", _stop_strings(self.stop))

    @staticmethod
    def _unit_open(name: str, value: float) -> float:
        v = _finite(name, value)
        if not 0.0 < v <= 1.0:
            raise InvalidParameterError(f"{name} must be in (0, 1] (1 = off), got {v:g}")
        return v

    @property
    def greedy(self) -> bool:
        """True when temperature is 0 (argmax decoding)."""
        return self.temperature == 0.0

    @property
    def mask_temperature(self) -> float:
        """T_m actually used for the plausibility mask."""
        if self.plausibility_temperature is not None:
            return self.plausibility_temperature
        return self.temperature if self.temperature > 0 else 1.0

    def with_(self, **changes) -> "GenerationParams":
        """A validated copy with some fields changed."""
        return replace(self, **changes)

    @classmethod
    def field_names(cls) -> Tuple[str, ...]:
        return tuple(f.name for f in fields(cls))
