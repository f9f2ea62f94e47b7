"""What a request is guided by, as every face takes it: principles, things to avoid, a negative prompt
(classifier-free guidance) and documents (context-aware decoding).

One shape for the HTTP body, the `--principles-file` TOML file and a chat transcript:
`principles: [{text, ratio, weight}]`, `avoid: [{text, ratio}]`, `ratio_schedule: "fixed" |
"adaptive"`, `negative_prompt`, `cfg_scale` (alias `guidance_scale`), `documents`, `document_ratio`.
A `PrincipleSpec` is checked once; each error names its field as the body spells it
(`principles[1].ratio`). It submits itself through the public Aligner API: one principle, nothing
to avoid and a fixed ratio is Linear Alignment exactly as before (a PromptPair at that ratio);
anything else is one BranchSet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

from ..decoding.combination import normalise_weights
from ..decoding.params import RATIO_MAX, RATIO_MIN, GenerationParams
from ..errors import InvalidParameterError, check_unicode
from .prompts import raw_pair

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
    negative_prompt: Optional[str] = None  # TabbyAPI's: a whole raw negative prompt, used when cfg_scale != 1
    cfg_scale: float = 1.0  # TabbyAPI's (alias guidance_scale): 1 = no classifier-free guidance
    documents: Tuple[str, ...] = ()  # context-aware decoding: the principled branch holds them
    document_ratio: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "principles", tuple(self.principles))
        object.__setattr__(self, "avoid", tuple(self.avoid))
        object.__setattr__(self, "documents", tuple(self.documents))
        self._check_guidance()
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
        if not isinstance(self.adaptive, bool):
            raise SpecError("ratio_schedule", "adaptive must be true or false", "type")
        if self.adaptive and not self.guided:
            raise SpecError("ratio_schedule", "an adaptive ratio needs a principle, a thing to avoid, a negative "
                                              "prompt or documents")

    def _check_guidance(self) -> None:
        """negative_prompt, cfg_scale, documents and document_ratio (the principles are checked after)."""
        _in_range("cfg_scale", self.cfg_scale, 1.0, 1.0 + RATIO_MAX)
        object.__setattr__(self, "cfg_scale", float(self.cfg_scale))
        neg = self.negative_prompt
        if neg is not None and not isinstance(neg, str):
            raise SpecError("negative_prompt", f"must be a string, got {type(neg).__name__}", "type")
        if neg is not None:
            try:
                check_unicode(neg)
            except InvalidParameterError as exc:
                raise SpecError("negative_prompt", str(exc).replace("text is", "is")) from None
        # As TabbyAPI: ignored while cfg_scale is 1; empty means the BOS token alone.
        if not self.cfg or neg == "":
            object.__setattr__(self, "negative_prompt", None)
        for i, d in enumerate(self.documents):
            _text(f"documents[{i}]", d)
        _in_range("document_ratio", self.document_ratio, RATIO_MIN)
        if self.documents and (self.principles or self.avoid or self.cfg):
            raise SpecError("documents", "documents are decoded against the same conversation with empty documents; "
                                         "send them without principles, avoid or cfg_scale")

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
        cfg, guidance = data.get("cfg_scale"), data.get("guidance_scale")
        if cfg is not None and guidance is not None and cfg != guidance:
            raise SpecError("guidance_scale", "is an alias of cfg_scale: give one of them")
        scale = cfg if cfg is not None else guidance
        documents = data.get("documents")
        if isinstance(documents, str):
            documents = [documents]
        return cls(tuple(principles), tuple(avoid), schedule == "adaptive", data.get("negative_prompt"),
                   1.0 if scale is None else scale, tuple(_list("documents", documents)),
                   1.0 if data.get("document_ratio") is None else data.get("document_ratio"))

    def to_fields(self) -> Dict[str, Any]:
        """The inverse of from_fields (a transcript's fields)."""
        out = {"principles": [{"text": p.text, "ratio": p.ratio, "weight": p.weight} for p in self.principles],
               "avoid": [{"text": a.text, "ratio": a.ratio} for a in self.avoid],
               "ratio_schedule": "adaptive" if self.adaptive else "fixed"}
        if self.cfg:
            out.update(cfg_scale=self.cfg_scale, negative_prompt=self.negative_prompt)
        if self.documents:
            out.update(documents=list(self.documents), document_ratio=self.document_ratio)
        return out

    # ---- use ------------------------------------------------------------------------------------
    @property
    def cfg(self) -> bool:
        """Classifier-free guidance is on (cfg_scale != 1): one raw negative branch (or BOS alone)."""
        return self.cfg_scale != 1.0

    @property
    def guided(self) -> bool:
        """Anything beyond plain decoding: principles, avoid, a negative prompt or documents."""
        return bool(self.principles or self.avoid or self.cfg or self.documents)

    @property
    def k(self) -> int:
        """Branches a request needs: one per principle, per avoid text and for the negative prompt,
        plus the plain prompt (documents: two)."""
        if self.documents:
            return 2
        n = len(self.principles) + len(self.avoid) + int(self.cfg)
        return n + 1 if n else 1

    @property
    def single(self) -> Optional[Principle]:
        """The principle when this is today's Linear Alignment request (one principle, fixed ratio)."""
        if len(self.principles) == 1 and not self.avoid and not self.adaptive and not self.cfg:
            return self.principles[0]
        return None

    def check_branches(self, max_branches: int) -> None:
        """Refuse a set that needs more KV sequences than one request may use."""
        if self.k > max_branches:
            field = ("negative_prompt" if self.cfg and self.k - 1 <= max_branches else
                     "avoid" if len(self.principles) + 1 <= max_branches else "principles")
            raise SpecError(field, f"{len(self.principles)} principles, {len(self.avoid)} texts to avoid"
                                   f"{' and a negative prompt' if self.cfg else ''} need {self.k} branches, more "
                                   f"than max_branches={max_branches}; give fewer, or load with --max-branches {self.k}")

    def submit(self, la, params: GenerationParams, **where):
        """Start the request on an Aligner; `where`: prompt, system or messages as Aligner.submit takes them."""
        def branches():
            if self.documents:
                return la.documents(where.get("prompt"), self.documents, ratio=self.document_ratio,
                                    adaptive=self.adaptive, system=where.get("system"), messages=where.get("messages"))
            raw = [self.negative_prompt or la.unconditional_prompt()] if self.cfg else []
            return la.branches(
                where.get("prompt"), [p.text for p in self.principles], ratios=[p.ratio for p in self.principles],
                weights=[p.weight for p in self.principles], avoid=[a.text for a in self.avoid],
                avoid_ratios=[a.ratio for a in self.avoid] + [self.cfg_scale - 1.0] * len(raw),
                adaptive=self.adaptive, system=where.get("system"), messages=where.get("messages"), avoid_raw=raw)

        return self._start(la, params, lambda: where, lambda p: {"principle": p.text, **where}, branches)

    def submit_raw(self, la, params: GenerationParams, prompt: str):
        """Start a raw completion: each principle (or avoid text) and the prompt joined by a blank
        line, the prompt alone as the plain branch."""
        from ..runtime.branches import compose

        def branches():
            if self.documents:
                raise SpecError("documents", "documents go with chat messages: use /v1/chat/completions")
            raw = [(self.negative_prompt or la.unconditional_prompt(), None)] if self.cfg else []
            return compose([(f"{p.text}\n\n{prompt}", None) for p in self.principles],
                           [(f"{a.text}\n\n{prompt}", None) for a in self.avoid] + raw, (prompt, None),
                           [p.ratio for p in self.principles], [p.weight for p in self.principles],
                           [a.ratio for a in self.avoid] + [self.cfg_scale - 1.0] * len(raw), self.adaptive)

        return self._start(la, params, lambda: {"pair": raw_pair(prompt, None)},
                           lambda p: {"pair": raw_pair(f"{p.text}\n\n{prompt}", prompt)}, branches)

    def _start(self, la, params: GenerationParams, plain, single, branches):
        """The one choice of decoding: plain without principles (`plain()`: Aligner.submit's keywords),
        Linear Alignment at the principle's ratio for `single` (`single(p)`), else `branches()`."""
        self.check_branches(la.max_branches)
        if not self.guided:
            return la.submit(params=params, **plain())
        p = self.single
        if p is not None:
            return la.submit(params=params.with_(ratio=p.ratio), **single(p))
        return la.submit(params=params, branches=branches())

    def describe(self) -> str:
        """One line for people (chat's /principle list and /compare labels)."""
        if not self.guided:
            return "no principle (plain decoding)"
        parts = [f"{i + 1}. {p.text!r} r={p.ratio:g}" + (f" w={p.weight:g}" if p.weight != 1.0 else "")
                 for i, p in enumerate(self.principles)]
        parts += [f"avoid {a.text!r} s={a.ratio:g}" for a in self.avoid]
        if self.cfg:
            parts.append(f"negative prompt {self.negative_prompt or '(BOS)'!r:.60} cfg_scale={self.cfg_scale:g}")
        if self.documents:
            parts.append(f"{len(self.documents)} document(s) r={self.document_ratio:g}")
        return "; ".join(parts) + ("; adaptive ratio" if self.adaptive else "")


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
    bounds = f"in [{low:g}, {high:g}]" if math.isfinite(high) else f">= {low:g}"
    try:
        number = float(value)
    except OverflowError:  # an integer beyond the float range (a hostile JSON body)
        raise SpecError(field, f"must be a finite number {bounds}, got an integer of {len(str(value))} digits") from None
    if not math.isfinite(number) or not low <= number <= high:
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
