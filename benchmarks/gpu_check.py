"""Exactness on an accelerator: batched aligned decoding vs two private contexts, same device.

    python benchmarks/gpu_check.py --n-gpu-layers 99      # prints JSON
    python benchmarks/gpu_check.py --n-gpu-layers 0 --prompts 1 --tokens 8 --threads 1   # a CPU smoke run

For each prompt: greedy aligned tokens (r = 2) from the engine (two sequences, one batch per step)
against an independent loop over two private single-sequence contexts with NumPy math, and the
largest |logit difference| of the first principled and plain rows.
"""

import argparse
import json
import os
import sys
import time

import llama_cpp  # noqa: F401  before numpy: on the CUDA test image numpy first made model loading crash
import numpy as np

from rowspy import recorded_rows  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "integration"))
from reference import SeparateContext, nucleus  # noqa: E402  (the tests' own slow path)

from la_edge import Aligner, GenerationParams  # noqa: E402

PROMPTS = ["Why is the sky blue?", "Tell me about the moon.", "What is a prime number?",
           "How do vaccines work?", "Write a haiku about rain."]
PRINCIPLE = "Explain it to a curious ten-year-old."


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-gpu-layers", type=int, default=99)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--ratio", type=float, default=2.0)
    ap.add_argument("--prompts", type=int, default=len(PROMPTS), help="how many of the prompts to check")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    args = ap.parse_args()
    la = Aligner.load(n_ctx=1024, n_gpu_layers=args.n_gpu_layers, n_threads=args.threads)
    out = {"n_gpu_layers": args.n_gpu_layers, "sampler": la.sampler, "prompts": []}
    try:
        for prompt in PROMPTS[:args.prompts]:
            pair = la.prompts(prompt, PRINCIPLE)
            params = GenerationParams(temperature=0.0, ratio=args.ratio, max_tokens=args.tokens)
            with recorded_rows(la) as rows:
                t0 = time.perf_counter()
                engine_tokens = la.generate(params=params, pair=pair).tokens
                t_engine = time.perf_counter() - t0
            tp, t0_ = la.tokenize(pair.principled), la.tokenize(pair.plain)
            a = SeparateContext(la.backend.model.handle, 1024, la.backend.n_threads)
            b = SeparateContext(la.backend.model.handle, 1024, la.backend.n_threads)
            zp = a.eval(tp)
            z0 = b.eval(t0_)
            first_diff = max(float(np.abs(zp - rows[0][0]).max()), float(np.abs(z0 - rows[0][1]).max()))
            ref = []
            for _ in range(len(engine_tokens)):
                keep = nucleus(zp, 0.8, 1.0)
                z = zp + np.float32(args.ratio) * (zp - z0)
                tok = int(keep[np.argmax(z[keep])])
                ref.append(tok)
                zp = a.eval([tok])
                z0 = b.eval([tok])
            a.close()
            b.close()
            agree = next((i for i, (x, y) in enumerate(zip(engine_tokens, ref)) if x != y), len(ref))
            out["prompts"].append({"prompt": prompt, "tokens": len(engine_tokens), "identical": engine_tokens == ref,
                                   "first_divergence": None if engine_tokens == ref else agree,
                                   "first_step_max_abs_logit_diff": first_diff, "engine_s": t_engine})
    finally:
        la.close()
    out["all_identical"] = all(p["identical"] for p in out["prompts"])
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
