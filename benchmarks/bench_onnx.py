"""ONNX backend vs llama.cpp backend on the same checkpoint: aligned and plain decode tok/s, as JSON.

    python benchmarks/bench_onnx.py                       # derive checkpoint + exports in --workdir
    python benchmarks/bench_onnx.py --onnx DIR --gguf F16.gguf

Plain = one sequence (no principle); aligned = two sequences per step (Linear Alignment, greedy,
ratio 2). Tokens/s count generated tokens after the first; medians over prompts x repetitions,
methods interleaved so both backends see the same machine load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from la_edge.faces.bench.decode import BENCH_PRINCIPLE, BENCH_PROMPTS  # noqa: E402
from la_edge.faces.bench.timing import time_request  # noqa: E402
from la_edge.decoding.params import GenerationParams  # noqa: E402


def prepare(workdir: str):
    """Checkpoint derived from the embedded GGUF, then ONNX fp32 and GGUF f16 exports (reused if present)."""
    from export.gguf import checkpoint_from_gguf, export_gguf
    from export.onnx import export_onnx
    from la_edge.backends.models import default_model_path

    ck, onnx, f16 = (os.path.join(workdir, n) for n in ("ckpt", "onnx", "m-f16.gguf"))
    if not os.path.isfile(os.path.join(ck, "config.json")):
        checkpoint_from_gguf(default_model_path(), ck)
    if not os.path.isfile(os.path.join(onnx, "model.onnx")):
        export_onnx(ck, onnx, force=True)
    if not os.path.isfile(f16):
        export_gguf(ck, f16, "f16", force=True)
    return onnx, f16


def decode_speed(la, pair, params) -> float:
    return time_request(la, pair, params)["tokens_per_s"]


def run(onnx: str, gguf: str, tokens: int, reps: int, threads: int) -> dict:
    from la_edge.runtime.aligner import Aligner
    from la_edge import Aligner as _Aligner

    backends = {"onnx": _Aligner.load(onnx, backend="onnx", n_ctx=2048, n_threads=threads),
                "llama.cpp": Aligner.load(gguf, n_ctx=2048, n_threads=threads)}
    params = GenerationParams(temperature=0.0, ratio=2.0, max_tokens=tokens, ignore_eos=True)
    samples = {f"{b}/{m}": [] for b in backends for m in ("plain", "aligned")}
    try:
        for la in backends.values():  # warm-up
            decode_speed(la, la.prompts(BENCH_PROMPTS[0], BENCH_PRINCIPLE), params.with_(max_tokens=4))
        for _ in range(reps):
            for prompt in BENCH_PROMPTS:
                for name, la in backends.items():
                    samples[f"{name}/plain"].append(decode_speed(la, la.prompts(prompt), params))
                    samples[f"{name}/aligned"].append(decode_speed(la, la.prompts(prompt, BENCH_PRINCIPLE), params))
    finally:
        for la in backends.values():
            la.close()
    med = {k: statistics.median(v) for k, v in samples.items()}
    return {
        "checkpoint": {"onnx": onnx, "gguf": gguf}, "tokens": tokens, "repetitions": reps,
        "prompts": len(BENCH_PROMPTS), "threads": threads, "ratio": params.ratio,
        "tokens_per_s": med,
        "aligned_vs_plain": {b: med[f"{b}/aligned"] / med[f"{b}/plain"] for b in backends},
        "onnx_vs_llama_cpp": {m: med[f"onnx/{m}"] / med[f"llama.cpp/{m}"] for m in ("plain", "aligned")},
        "samples": samples,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--onnx", help="folder written by `la-edge export onnx`")
    p.add_argument("--gguf", help="f16 GGUF of the same checkpoint (`la-edge export gguf --type f16`)")
    p.add_argument("--workdir", default=os.path.join(os.path.expanduser("~"), ".cache", "la_edge_bench_onnx"))
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--repetitions", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()
    onnx, gguf = args.onnx, args.gguf
    if not (onnx and gguf):
        onnx, gguf = prepare(args.workdir)
    print(json.dumps(run(onnx, gguf, args.tokens, args.repetitions, args.threads), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
