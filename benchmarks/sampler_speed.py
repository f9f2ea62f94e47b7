"""Time per la_choose call of the native sampler, this build against an older revision's source.

Rows are model-like: N(0, 2) logits with +12 on 20 random ids; the branches differ by small noise.
Greedy Linear Alignment with the default parameters (plausibility_top_p 0.8): K = 1 plain,
K = 2 (principled, plain), K = 3 two principles mixed 50/50 plus the plain row. Both libraries
get the same rows and must choose the same tokens. Run (small: the host is shared):

    python benchmarks/sampler_speed.py [--ref HEAD] [--calls 300]
"""

import argparse
import ctypes
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the working tree, not an installed copy

from la_edge.decoding import native
from la_edge.decoding.combination import Combination
from la_edge.decoding.params import GenerationParams

ROOT = Path(__file__).resolve().parent.parent
CFLAGS = ["-O3", "-DNDEBUG", "-ffp-contract=off", "-fno-fast-math", "-fPIC", "-shared", "-std=c11"]


def build_ref(ref: str, out_dir: str) -> str:
    """Compile native/ at git revision `ref` into out_dir; the library's path."""
    for name in ("la_sampler.c", "la_sampler.h"):
        src = subprocess.run(["git", "show", f"{ref}:native/{name}"], cwd=ROOT, check=True,
                             capture_output=True).stdout
        Path(out_dir, name).write_bytes(src)
    lib = os.path.join(out_dir, "libla_sampler_ref.so")
    subprocess.run(["cc", *CFLAGS, "-o", lib, os.path.join(out_dir, "la_sampler.c"), "-lm"], check=True)
    return lib


def model_rows(n: int, k: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(n) * 2.0
    base[rng.choice(n, 20, replace=False)] += 12.0
    return [np.ascontiguousarray(base + 0.5 * rng.standard_normal(n), dtype=np.float32) for _ in range(k)]


def combination(k: int) -> Combination:
    if k == 1:
        return Combination.plain()
    if k == 2:
        return Combination.linear_alignment(2.0)
    return Combination.compose([2.0, 2.0])


class Timer:
    """la_choose of one library on prepared arguments (the ctypes call the binding makes)."""

    def __init__(self, lib, n: int):
        self.lib, self.n = lib, n
        self.ws = lib.la_workspace_new(n)
        self.result = native.LaResult()
        self.state = ctypes.c_uint64(0)
        self.ptrs = (ctypes.c_void_p * native.MAX_BRANCHES)()

    def prepare(self, rows, combo, params):
        for i, r in enumerate(rows):
            self.ptrs[i] = r.ctypes.data
        self.combo = native._to_combination(combo)
        self.params = native._to_params(params)
        self.k = combo.k

    def call(self) -> int:
        rc = self.lib.la_choose(ctypes.addressof(self.ptrs), self.k, ctypes.addressof(self.combo), self.n,
                                ctypes.addressof(self.params), None, 0, ctypes.addressof(self.state), self.ws,
                                ctypes.addressof(self.result))
        assert rc == 0, rc
        return self.result.token


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", default="HEAD", help="git revision of the baseline source (default HEAD)")
    ap.add_argument("--calls", type=int, default=300, help="timed calls per case and library")
    args = ap.parse_args()
    if not native.available():
        raise SystemExit(f"native sampler unavailable: {native.load_error()}")
    with tempfile.TemporaryDirectory() as tmp:
        old = ctypes.CDLL(build_ref(args.ref, tmp))
        native._bind(old)
        libs = {f"{args.ref}": old, "this build": native._LIB}
        params = GenerationParams(temperature=0.0)
        print(f"this build: {native.LIB_PATH}")
        print(f"{'n_vocab':>8} {'K':>2} " + " ".join(f"{name + ' µs':>14}" for name in libs) + "  speedup")
        for n in (49_152, 262_144):
            timers = {name: Timer(lib, n) for name, lib in libs.items()}
            for k in (1, 2, 3):
                rows, combo = model_rows(n, k), combination(k)
                times = {}
                for t in timers.values():
                    t.prepare(rows, combo, params)
                tokens = {name: t.call() for name, t in timers.items()}
                assert len(set(tokens.values())) == 1, tokens
                for _ in range(3):  # interleave the libraries against drifting load
                    for name, t in timers.items():
                        for _ in range(args.calls // 3):
                            t0 = time.perf_counter_ns()
                            t.call()
                            times.setdefault(name, []).append(time.perf_counter_ns() - t0)
                med = [np.median(times[name]) / 1e3 for name in libs]
                print(f"{n:>8} {k:>2} " + " ".join(f"{m:>14.1f}" for m in med) + f"  {med[0] / med[-1]:6.2f}x")
            for name, t in timers.items():
                libs[name].la_workspace_free(t.ws)


if __name__ == "__main__":
    main()
