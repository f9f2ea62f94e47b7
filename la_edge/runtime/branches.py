"""A request's branch set: K prompts decoded side by side and the combination over their logits.

Linear Alignment is K = 2: the principled prompt and the plain one, combined as
z = z_P + r (z_P - z_0). Several principles, things to avoid and the plain prompt are K > 2 of the
same shape (`la_edge.decoding.combination`). Branch 0 comes first; the plain branch is the
combination's reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from ..decoding.combination import Combination
from ..errors import InvalidParameterError
from .prompts import Parts, PromptPair, tokenize_rendered

ROLES = ("principled", "avoid", "plain")


@dataclass(frozen=True)
class Branch:
    """One branch: its exact prompt string, its (text, is_scaffolding) parts (None: a raw prompt
    whose control-token strings are parsed), and its role."""

    text: str
    parts: Optional[Parts] = None
    role: str = "principled"

    def __post_init__(self):
        if self.role not in ROLES:
            raise InvalidParameterError(f"branch role must be one of {', '.join(ROLES)}, got {self.role!r}")
        if self.parts is not None and "".join(t for t, _ in self.parts) != self.text:
            raise InvalidParameterError("prompt parts must join to the prompt string they split")


@dataclass(frozen=True)
class BranchSet:
    """K branches and the combination of their logits rows (one weight set per branch)."""

    branches: Tuple[Branch, ...]
    combination: Combination

    def __post_init__(self):
        object.__setattr__(self, "branches", tuple(self.branches))
        if len(self.branches) != len(self.combination.mix):
            raise InvalidParameterError(
                f"{len(self.branches)} branches but the combination weighs {len(self.combination.mix)}")

    @property
    def k(self) -> int:
        return len(self.branches)

    @property
    def plain(self) -> Optional[Branch]:
        """The reference (plain) branch, if the combination has one."""
        ref = self.combination.ref
        return None if ref is None else self.branches[ref]

    @property
    def base(self) -> int:
        """The branch the answer is decoded from: the first with a mix weight (the plain one when
        there is no principle, only things to avoid)."""
        return next(k for k, m in enumerate(self.combination.mix) if m > 0)

    @classmethod
    def from_pair(cls, pair: PromptPair, ratio: float) -> "BranchSet":
        """Linear Alignment over a PromptPair; r = 0 (or no plain prompt) decodes the principled one alone."""
        principled = Branch(pair.principled, pair.principled_parts)
        if pair.plain is None or ratio == 0.0:
            return cls((principled,), Combination.plain())
        return cls((principled, Branch(pair.plain, pair.plain_parts, "plain")),
                   Combination.linear_alignment(ratio))

    def describe(self) -> Dict[str, object]:
        """The exact prompt strings: principled (the base branch) and plain, and every branch when K > 2
        or a branch is avoided (a negative prompt)."""
        plain = self.plain
        out: Dict[str, object] = {"principled": self.branches[self.base].text,
                                  "plain": plain.text if plain is not None else None}
        if self.k > 2 or any(b.role == "avoid" for b in self.branches):
            out["branches"] = [{"role": b.role, "text": b.text} for b in self.branches]
        return out


def tokenize_branches(backend, branches: BranchSet) -> List[List[int]]:
    """Token ids of every branch (see tokenize_rendered)."""
    return [tokenize_rendered(backend, b.text, b.parts) for b in branches.branches]


def compose(principled: Sequence[Tuple[str, Optional[Parts]]], avoid: Sequence[Tuple[str, Optional[Parts]]],
            plain: Tuple[str, Optional[Parts]], ratios: Sequence[float], weights: Optional[Sequence[float]] = None,
            avoid_ratios: Sequence[float] = (), adaptive: bool = False) -> BranchSet:
    """Branches [P_1..P_n, N_1..N_m, plain] with Combination.compose over them.

    A negative pushed at s = 0 changes nothing and gets no branch (`/cfg 1`, cfg_scale 1); with
    nothing else left the plain prompt decodes alone (K = 1)."""
    weights = None if weights is None else tuple(weights)
    combo = Combination.compose(tuple(ratios), weights, tuple(avoid_ratios), adaptive)  # zeros checked too
    kept = [j for j, s in enumerate(avoid_ratios) if float(s) != 0.0]
    if len(kept) < len(avoid_ratios) and len(avoid) == len(avoid_ratios):
        avoid, avoid_ratios = [avoid[j] for j in kept], [avoid_ratios[j] for j in kept]
        if not principled and not avoid:
            return BranchSet((Branch(plain[0], plain[1], "plain"),), Combination.plain())
        combo = Combination.compose(tuple(ratios), weights, tuple(avoid_ratios), adaptive)
    branches = ([Branch(t, p) for t, p in principled] + [Branch(t, p, "avoid") for t, p in avoid]
                + [Branch(plain[0], plain[1], "plain")])
    return BranchSet(tuple(branches), combo)
