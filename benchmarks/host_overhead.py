"""The engine's host work per decode step with the forward pass taken out.

A backend wrapper returns real logits rows of the embedded model (one recorded row, slightly
perturbed per branch) without running the model, so each step costs only what la_edge adds: the
scheduler, the sampler on K rows of 49,152 columns, the events and the hand-offs to the caller's
thread. Run:

    python benchmarks/host_overhead.py [--tokens 400] [--json]
"""

import argparse
import json
import time

import numpy as np

from la_edge import Aligner, GenerationParams
from la_edge.runtime.engine import Engine


class FreeForward:
    """The real backend, except decode() costs nothing and every logits row is a recorded one."""

    def __init__(self, inner, rows):
        self.inner, self.rows, self.last_forward_s = inner, rows, 0.0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def decode(self, entries):
        self.last_forward_s = 0.0

    def logits_row(self, index):
        return self.rows[index % len(self.rows)]

    def is_eog(self, token):
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=400)
    ap.add_argument("--background", action="store_true",
                    help="accepted for older revisions' runs; since engine v4 the engine thread always runs")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    la = Aligner.load(n_ctx=1024)
    la.generate("Why is the sky blue?", params=GenerationParams(max_tokens=2, ratio=0.0))  # ends on a one-row decode
    row = np.ctypeslib.as_array(la.backend.logits_row(0), shape=(la.backend.n_vocab,)).copy()
    rows = [row + np.float32(0.01 * k) * np.random.default_rng(k).standard_normal(row.size).astype(np.float32)
            for k in range(4)]
    engine = Engine(FreeForward(la.backend, rows), max_requests=1, max_branches=4)
    if args.background:
        engine.start()
    params = GenerationParams(temperature=0.0, max_tokens=args.tokens, ignore_eos=True)
    principles = ["Be brief.", "Be kind.", "Be calm."]
    out = []
    for k in (1, 2, 3, 4):
        request = (la.prompts("Why?") if k == 1 else la.prompts("Why?", principles[0]) if k == 2
                   else la.branches("Why?", principles[:k - 1]))
        engine.profile(reset=True)
        t0 = time.perf_counter()
        n = sum(1 for _ in engine.submit(request, params))
        wall = time.perf_counter() - t0
        p = engine.profile(reset=True)
        out.append({"k": k, "ms_per_token": 1e3 * wall / n, "sampler_ms": p["choose_ms_per_step"],
                    "engine_ms": p["host_ms_per_step"], "outside_decode_ms": p["outside_decode_ms_per_step"]})
    engine.stop()
    la.close()
    if args.json:
        print(json.dumps({"background": args.background, "tokens": args.tokens, "rows": out}, indent=1))
        return
    print("| K | ms per token | sampler ms | engine ms | outside the decode ms |\n|---:|---:|---:|---:|---:|")
    for r in out:
        print(f"| {r['k']} | {r['ms_per_token']:.3f} | {r['sampler_ms']:.3f} | {r['engine_ms']:.3f} | "
              f"{r['outside_decode_ms']:.3f} |")


if __name__ == "__main__":
    main()
