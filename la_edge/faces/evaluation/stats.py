"""Small statistics shared by the evaluation modes."""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np


def bootstrap_ci(values: Sequence[float], n: int = 1000, seed: int = 0, level: float = 0.95) -> Tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values`: `n` resamples with replacement, fixed seed.

    For a paired comparison pass the per-item differences. Raises ValueError on no values.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"bootstrap_ci needs a non-empty 1-D sequence of numbers, got shape {x.shape}")
    if n < 1 or not 0.0 < level < 1.0:
        raise ValueError(f"bootstrap_ci needs n >= 1 and 0 < level < 1, got n={n}, level={level}")
    idx = np.random.default_rng(seed).integers(0, x.size, size=(n, x.size))
    means = x[idx].mean(axis=1)
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(means, [tail, 100.0 - tail])
    return float(lo), float(hi)
