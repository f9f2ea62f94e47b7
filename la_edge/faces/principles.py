"""Several principles, things to avoid and an adaptive ratio, as every face takes them.

One shape for the HTTP body, the `--principles-file` TOML file and a chat transcript:
`principles: [{text, ratio, weight}]`, `avoid: [{text, ratio}]`, `ratio_schedule: "fixed" |
"adaptive"`. A `PrincipleSpec` is checked once; each error names its field as the body spells it
(`principles[1].ratio`). It submits itself through the public Aligner API: one principle, nothing
to avoid and a fixed ratio is Linear Alignment exactly as before (a PromptPair at that ratio);
anything else is one BranchSet (`Aligner.branches`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..decoding.combination import normalise_weights
from ..decoding.params import RATIO_MAX, RATIO_MIN, GenerationParams
from ..errors import InvalidParameterError, check_unicode
from ..runtime.prompts import raw_pair

DEFAULT_RATIO = GenerationParams().ratio
DEFAULT_AVOID_RATIO = 2.0
SCHEDULES = ("fixed", "adaptive")
_PRINCIPLE_KEYS = ("text", "ratio", "weight")
_AVOID_KEYS = ("text", "ratio")


class SpecError(InvalidParameterError):
    """A bad principle field; `field` names it (`principles[0].text`), `kind` is "value" or "type"."""

    def __init__(self, field: str, message: str, kind: str = "value"):
        super().__init__(f"{field}: {message}")
        self.field, self.kind = field, kind


@dataclass(frozen=True)
class Principle:
    text: str
    ratio: float = DEFAULT_RATIO
    weight: float = 1.0


@dataclass(frozen=True)
class Avoid:
    text: str
    ratio: float = DEFAULT_AVOID_RATIO


@dataclass(frozen=True)
class PrincipleSpec:
    """What a request aligns to: principles (each with a ratio and a weight), texts to avoid, and
    whether the ratio adapts per token. Empty: plain decoding.

    Weights are normalised to sum to 1; any finite weights >= 0 do (even near the float maximum).
    A nonzero weight below 1e-30 of their sum would round to 0, so it is refused naming
    `principles[i].weight` (set it to 0 to drop that principle's pull) rather than silently dropped."""

    principles: Tuple[Principle, ...] = ()
    avoid: Tuple[Avoid, ...] = ()
    adaptive: bool = False

    def __post_init__(self):
        object.__setattr__(self, "principles", tuple(self.principles))
        object.__setattr__(self, "avoid", tuple(self.avoid))
        for i, p in enumerate(self.principles):
            _text(f"principles[{i}].text", p.text)
            _in_range(f"principles[{i}].ratio", p.ratio, RATIO_MIN)
            _in_range(f"principles[{i}].weight", p.weight, 0.0, math.inf)
        if self.principles:
            weights = [p.weight for p in self.principles]
            if not max(weights) > 0:
                raise SpecError("principles", "the weights must sum to more than 0 (they are normalised to 1)")
            normalise_weights(weights, lambda i, message: SpecError(f"principles[{i}].weight", message))
        for j, a in enumerate(self.avoid):
            _text(f"avoid[{j}].text", a.text)
            _in_range(f"avoid[{j}].ratio", a.ratio, 0.0)
        if self.avoid and not self.principles:
            raise SpecError("avoid", "things to avoid are pushed away from a principle: give at least one principle")
        if not isinstance(self.adaptive, bool):
            raise SpecError("ratio_schedule", "adaptive must be true or false", "type")
        if self.adaptive and not self.principles:
            raise SpecError("ratio_schedule", "an adaptive ratio needs at least one principle")

    # ---- building -------------------------------------------------------------------------------
    @classmethod
    def one(cls, principle: Optional[str], ratio: float = DEFAULT_RATIO) -> "PrincipleSpec":
        """Today's request: one principle (or none) at one ratio."""
        return cls(() if principle is None else (Principle(principle, ratio),))

    @classmethod
    def from_fields(cls, data: Mapping[str, Any], default_ratio: float = DEFAULT_RATIO) -> "PrincipleSpec":
        """From the body / file / transcript shape: `principles`, `avoid`, `ratio_schedule` (each
        optional); an item without a ratio takes `default_ratio` (DEFAULT_AVOID_RATIO for avoid)."""
        principles = [Principle(*_item(f"principles[{i}]", item, _PRINCIPLE_KEYS, (default_ratio, 1.0)))
                      for i, item in enumerate(_list("principles", data.get("principles")))]
        avoid = [Avoid(*_item(f"avoid[{j}]", item, _AVOID_KEYS, (DEFAULT_AVOID_RATIO,)))
                 for j, item in enumerate(_list("avoid", data.get("avoid")))]
        schedule = data.get("ratio_schedule")
        if schedule is not None and schedule not in SCHEDULES:
            kind = "value" if isinstance(schedule, str) else "type"
            raise SpecError("ratio_schedule", f"must be 'fixed' or 'adaptive', got {schedule!r:.60}", kind)
        return cls(tuple(principles), tuple(avoid), schedule == "adaptive")

    def to_fields(self) -> Dict[str, Any]:
        """The inverse of from_fields (a transcript's fields)."""
        return {"principles": [{"text": p.text, "ratio": p.ratio, "weight": p.weight} for p in self.principles],
                "avoid": [{"text": a.text, "ratio": a.ratio} for a in self.avoid],
                "ratio_schedule": "adaptive" if self.adaptive else "fixed"}

    # ---- use ------------------------------------------------------------------------------------
    @property
    def k(self) -> int:
        """Branches a request needs: one per principle and per avoid text, plus the plain prompt."""
        return len(self.principles) + len(self.avoid) + 1 if self.principles else 1

    @property
    def single(self) -> Optional[Principle]:
        """The principle when this is today's Linear Alignment request (one principle, fixed ratio)."""
        if len(self.principles) == 1 and not self.avoid and not self.adaptive:
            return self.principles[0]
        return None

    def check_branches(self, max_branches: int) -> None:
        """Refuse a set that needs more KV sequences than one request may use."""
        if self.k > max_branches:
            field = "avoid" if len(self.principles) + 1 <= max_branches else "principles"
            raise SpecError(field, f"{len(self.principles)} principles and {len(self.avoid)} texts to avoid need "
                                   f"{self.k} branches, more than max_branches={max_branches}; give fewer, or "
                                   f"load with --max-branches {self.k}")

    def submit(self, la, params: GenerationParams, **where):
        """Start the request on an Aligner; `where`: prompt, system or messages as Aligner.submit takes them."""
        def branches():
            return la.branches(
                where.get("prompt"), [p.text for p in self.principles], ratios=[p.ratio for p in self.principles],
                weights=[p.weight for p in self.principles], avoid=[a.text for a in self.avoid],
                avoid_ratios=[a.ratio for a in self.avoid], adaptive=self.adaptive, system=where.get("system"),
                messages=where.get("messages"))

        return self._start(la, params, lambda: where, lambda p: {"principle": p.text, **where}, branches)

    def submit_raw(self, la, params: GenerationParams, prompt: str):
        """Start a raw completion: each principle (or avoid text) and the prompt joined by a blank
        line, the prompt alone as the plain branch."""
        from ..runtime.branches import compose

        def branches():
            return compose([(f"{p.text}\n\n{prompt}", None) for p in self.principles],
                           [(f"{a.text}\n\n{prompt}", None) for a in self.avoid], (prompt, None),
                           [p.ratio for p in self.principles], [p.weight for p in self.principles],
                           [a.ratio for a in self.avoid], self.adaptive)

        return self._start(la, params, lambda: {"pair": raw_pair(prompt, None)},
                           lambda p: {"pair": raw_pair(f"{p.text}\n\n{prompt}", prompt)}, branches)

    def _start(self, la, params: GenerationParams, plain, single, branches):
        """The one choice of decoding: plain without principles (`plain()`: Aligner.submit's keywords),
        Linear Alignment at the principle's ratio for `single` (`single(p)`), else `branches()`."""
        self.check_branches(la.max_branches)
        if not self.principles:
            return la.submit(params=params, **plain())
        p = self.single
        if p is not None:
            return la.submit(params=params.with_(ratio=p.ratio), **single(p))
        return la.submit(params=params, branches=branches())

    def describe(self) -> str:
        """One line for people (chat's /principle list and /compare labels)."""
        if not self.principles:
            return "no principle (plain decoding)"
        parts = [f"{i + 1}. {p.text!r} r={p.ratio:g}" + (f" w={p.weight:g}" if p.weight != 1.0 else "")
                 for i, p in enumerate(self.principles)]
        parts += [f"avoid {a.text!r} s={a.ratio:g}" for a in self.avoid]
        return "; ".join(parts) + ("; adaptive ratio" if self.adaptive else "")


def per_item(flag: str, values: Optional[Sequence[float]], n: int, items: str, default: float) -> List[float]:
    """A repeatable CLI flag: absent (default for all), once (for all) or once per item, in order."""
    if not values:
        return [default] * n
    if len(values) == 1:
        return list(values) * n
    if len(values) != n:
        raise InvalidParameterError(f"{flag}: give one value for all {items} or one per {items[:-1]} ({n}), "
                                    f"got {len(values)}")
    return list(values)


def read_toml(path: str, what: str) -> Dict[str, Any]:
    """A TOML file as a dict; errors name the file and say what it was for (`what`)."""
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        try:
            import tomli as tomllib
        except ImportError:
            raise InvalidParameterError(f"{path}: reading TOML needs Python 3.11 or the tomli package") from None
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise InvalidParameterError(f"{path}: cannot read the {what} ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidParameterError(f"{path}: not valid TOML ({exc})") from None


def spec_from_table(data: Mapping[str, Any], where: str, default_ratio: float = DEFAULT_RATIO) -> PrincipleSpec:
    """One TOML table of principles, avoid and ratio_schedule (a --principles-file, or one preset of a
    --presets-file); errors begin with `where`."""
    unknown = sorted(set(data) - {"principles", "avoid", "ratio_schedule"})
    if unknown:
        raise InvalidParameterError(f"{where}: unknown key {unknown[0]!r} (principles, avoid, ratio_schedule)")
    try:
        return PrincipleSpec.from_fields(data, default_ratio)
    except InvalidParameterError as exc:
        raise InvalidParameterError(f"{where}: {exc}") from None


def load_file(path: str, default_ratio: float = DEFAULT_RATIO) -> PrincipleSpec:
    """A `--principles-file`: TOML with [[principles]] (text, ratio, weight), [[avoid]] (text, ratio)
    and ratio_schedule; errors name the file and the key."""
    return spec_from_table(read_toml(path, "principles file"), path, default_ratio)


# ---- checks ---------------------------------------------------------------------------------------
def _text(field: str, value: Any) -> None:
    if not isinstance(value, str):
        raise SpecError(field, f"must be a string, got {type(value).__name__}", "type")
    if not value.strip():
        raise SpecError(field, "must be a non-empty string")
    try:
        check_unicode(value)
    except InvalidParameterError as exc:
        raise SpecError(field, str(exc).replace("text is", "is")) from None


def _in_range(field: str, value: Any, low: float, high: float = RATIO_MAX) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(field, f"must be a number, got {type(value).__name__}", "type")
    if not math.isfinite(value) or not low <= value <= high:
        bounds = f"in [{low:g}, {high:g}]" if math.isfinite(high) else f">= {low:g}"
        raise SpecError(field, f"must be a finite number {bounds}, got {value!r}")


def _list(field: str, value: Any) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise SpecError(field, f"must be a list of objects, got {type(value).__name__}", "type")
    return value


def _item(field: str, item: Any, keys: Tuple[str, ...], defaults: Tuple[float, ...]) -> tuple:
    """(text, numbers...) of one {text, ...} object, numbers defaulted where absent; types unchecked here
    (the dataclass check names them)."""
    if isinstance(item, str):
        item = {"text": item}
    if not isinstance(item, Mapping):
        raise SpecError(field, f"must be an object with {', '.join(keys)}, got {type(item).__name__}", "type")
    unknown = sorted(set(item) - set(keys))
    if unknown:
        raise SpecError(f"{field}.{unknown[0]}", f"unknown key (an item has {', '.join(keys)})")
    if "text" not in item:
        raise SpecError(f"{field}.text", "missing (each item needs its text)")
    return (item["text"],) + tuple(item[k] if item.get(k) is not None else d for k, d in zip(keys[1:], defaults))
