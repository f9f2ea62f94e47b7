"""The ratio guard: a strength that lowers itself while the answer repeats.

A pure function of the tokens generated so far, so every path that calls `step.choose` (the
engine, `generate_step`, the slow references) applies it identically. While one of the last
GUARD_HOLD positions ends an n-gram already seen in the last GUARD_WINDOW tokens, the step's
guide weights are scaled by GUARD_SCALE (0: the base row alone, i.e. r = 0 for one principle).
"""

from __future__ import annotations

from typing import Sequence, Tuple

from .combination import Combination
from .params import GenerationParams

GUARD_NGRAM = 4  # a repeat is a 4-token n-gram seen before (the rep-4 of `la-edge eval`)
GUARD_WINDOW = 64  # ... within the last 64 tokens (llama.cpp's repeat_last_n default)
GUARD_HOLD = 8  # the guard stays on for 8 tokens after the last repeat
GUARD_SCALE = 0.0  # the guide weights' factor while it is on
GUARD_PENALTY = 1.3  # the repeat penalty at least, while it is on
GUARD_MASK_TOP_P = 1.0  # the plausibility nucleus while it is on (1: lifted; there is no push to keep plausible)


def repeating(history: Sequence[int], n: int = GUARD_NGRAM, window: int = GUARD_WINDOW,
              hold: int = GUARD_HOLD) -> bool:
    """True when an n-gram ending at one of the last `hold` positions occurred earlier in the window."""
    h = list(history[-(window + hold):])
    if len(h) < n + 1:
        return False
    for end in range(len(h), max(n, len(h) - hold), -1):
        gram = h[end - n:end]
        start = max(0, end - window)
        for j in range(start, end - n):
            if h[j:j + n] == gram:
                return True
    return False


def guarded(combination: Combination, params: GenerationParams,
            history: Sequence[int]) -> Tuple[Combination, GenerationParams, bool]:
    """(this step's combination and parameters, whether the guard is on)."""
    if not params.ratio_guard or not combination.guided or not repeating(history):
        return combination, params, False
    return (combination.scaled(GUARD_SCALE),
            params.with_(repeat_penalty=max(params.repeat_penalty, GUARD_PENALTY),
                         plausibility_top_p=GUARD_MASK_TOP_P if GUARD_SCALE == 0.0 else params.plausibility_top_p),
            True)
