"""The ratio guard: a strength that lowers itself while the answer repeats.

A pure function of the tokens generated so far, so every path that calls `step.choose` (the
engine, `generate_step`) applies it identically. While one of the last GUARD_HOLD positions ends
an n-gram also seen among the GUARD_WINDOW tokens before it, the step's guide weights are scaled by
GUARD_SCALE (0: the base row alone, r = 0) and the rows that make the base row get llama.cpp's
repeat penalty, so the nucleus (which only the base row shapes) can leave the loop.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

from .combination import Combination
from .params import GenerationParams

GUARD_NGRAM = 4  # a repeat is a 4-token n-gram seen before
GUARD_WINDOW = 64  # ... within the last 64 tokens (llama.cpp's repeat_last_n default)
GUARD_HOLD = 8  # the guard stays on for 8 tokens after the last repeat
GUARD_SCALE = 0.0  # the guide weights' factor while it is on
GUARD_PENALTY = 1.3  # llama.cpp's repeat penalty on the base rows while it is on (last GUARD_WINDOW tokens)


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


def guarded(combination: Combination, params: GenerationParams, history: Sequence[int]) -> Tuple[Combination, bool]:
    """(this step's combination, whether the guard is on: then its base rows are to be penalised)."""
    if not params.ratio_guard or not combination.guided or not repeating(history):
        return combination, False
    return combination.scaled(GUARD_SCALE), True


def penalised(row: np.ndarray, history: Sequence[int], penalty: float = GUARD_PENALTY,
              window: int = GUARD_WINDOW) -> np.ndarray:
    """A copy of a logits row with llama.cpp's repeat penalty on the tokens of the last `window`."""
    out = np.array(row, dtype=np.float32)
    seen = np.unique(np.asarray(history[-window:], dtype=np.int64))
    out[seen] = np.where(out[seen] > 0, out[seen] / np.float32(penalty), out[seen] * np.float32(penalty))
    return out
