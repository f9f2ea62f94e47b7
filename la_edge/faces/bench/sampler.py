"""Per-token cost of one Linear Alignment decision: native C sampler vs the NumPy reference.

Usage: la-edge bench --sampler [--quick] [--json]   (or python -m la_edge.faces.bench.sampler)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Dict, Iterable

import numpy as np

from ...decoding import native
from ...decoding.combination import Combination
from ...decoding.params import GenerationParams
from ...decoding.rng import SplitMix64
from ..tables import markdown_table

MODES = {
    "greedy": GenerationParams(temperature=0.0, ratio=2.0),
    "sample": GenerationParams(temperature=0.7, ratio=2.0, plausibility_top_p=0.8),
}


def realistic_rows(n_vocab: int, n_rows: int, seed: int = 0):
    """Heavy-tailed logits (Student t, df=5, scaled by 3) and a perturbed plain row."""
    rs = np.random.default_rng(seed)
    rows = []
    for _ in range(n_rows):
        zp = (rs.standard_t(5, n_vocab) * 3.0).astype(np.float32)
        z0 = (zp + rs.standard_normal(n_vocab).astype(np.float32) * 0.5).astype(np.float32)
        rows.append((zp, z0))
    return rows


def _median_ms(chooser, rows, params: GenerationParams, iters: int) -> float:
    rng = SplitMix64(1234)
    history = list(range(64))
    combo = Combination.linear_alignment(params.ratio)
    times = []
    for i in range(iters):
        pair = rows[i % len(rows)]
        t0 = time.perf_counter()
        chooser.choose(pair, combo, params, rng, history)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def run(vocab_sizes: Iterable[int] = (49152, 151936, 262144), iters: int = 200, quick: bool = False) -> Dict:
    """Median per-token milliseconds: {"sampler_ms": {str(V): {path: {mode: ms}}}}."""
    if quick:
        iters = min(iters, 30)
    out: Dict = {"sampler_ms": {}, "native_available": native.available(), "native_lib": native.LIB_PATH}
    for v in vocab_sizes:
        rows = realistic_rows(int(v), 4)
        paths = {"numpy": native.NumpySampler(int(v))}
        if native.available():
            paths = {"native": native.NativeSampler(int(v)), **paths}
        res: Dict = {}
        for name, chooser in paths.items():
            n = iters if name == "native" else max(5, iters // 10)
            for params in MODES.values():  # warm-up
                chooser.choose(rows[0], Combination.linear_alignment(params.ratio), params, SplitMix64(0), [])
            res[name] = {mode: round(_median_ms(chooser, rows, params, n), 4) for mode, params in MODES.items()}
        out["sampler_ms"][str(v)] = res
    return out


def table(result: Dict[str, object]) -> str:
    """A Markdown table of a run() result."""
    rows = [[v, name, f"{modes['greedy']:.4f}", f"{modes['sample']:.4f}"]
            for v, paths in result["sampler_ms"].items() for name, modes in paths.items()]
    return markdown_table(["vocab", "path", "greedy ms/token", "sample ms/token"], rows, "rlrr")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer iterations")
    ap.add_argument("--iters", type=int, default=200)
    args = ap.parse_args(argv)
    result = run(iters=args.iters, quick=args.quick)
    print(json.dumps(result, indent=2))
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
