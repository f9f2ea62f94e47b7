"""Where does a two-sequence decode step lose time as the context fills? (llama.cpp directly)

    python benchmarks/long_context.py [--model M] [--sizes 64,512,1024,2048] [--steps 24]   # JSON

Per filled context N (tokens per sequence), the mean ms of one decode step for:
  one_seq      1 token, 1 sequence holding N cells                      (plain decoding)
  two_seq      2 tokens, one per sequence, each holding N (split KV)    (aligned decoding, default)
  two_unified  the same in a unified KV cache                           (--kv-unified)
  one_seq_x2   2 tokens of ONE sequence holding N                       (same work, one stream)
Ratios two_seq / one_seq etc. come from the same run, interleaved per repetition.

    python benchmarks/long_context.py --spread [--model M]

A two-sequence step in a context of 8 sequences (split KV, 1,024 tokens each) with the pair on
neighbouring ids (0, 1) vs far apart (0, 7): llama.cpp attends over every stream in between.
"""

import argparse
import json
import statistics
import time

from la_edge.backends import BackendOptions, BatchEntry, load_backend

FILL = "The quick brown fox jumps over the lazy dog while the moon rises over quiet hills. "


def fill(b, seqs, n, tokens):
    for s in seqs:
        b.seq_remove(s)
        for i in range(0, n, b.n_batch):
            chunk = tokens[i:min(n, i + b.n_batch)]
            b.decode([BatchEntry(t, i + k, (s,)) for k, t in enumerate(chunk)])


def step_ms(b, entries_at, n, steps):
    t0 = time.perf_counter()
    for k in range(steps):
        b.decode(entries_at(n + k))
    return 1000 * (time.perf_counter() - t0) / steps


def spread(model, n=1024, steps=24, reps=3):
    b = load_backend(model, "llama.cpp", BackendOptions(n_ctx=n + steps + 64, n_seq_max=8))
    tokens = b.tokenize(FILL * (n // 8), add_special=False)[:n]
    out = {}
    try:
        for pair in ((0, 1), (0, 7), (0,)):
            runs = []
            for _ in range(reps):
                for s in range(8):
                    b.seq_remove(s)
                fill(b, pair, n, tokens)
                runs.append(step_ms(b, lambda p: [BatchEntry(tokens[1], p, (s,), True) for s in pair], n, steps))
            out["+".join(map(str, pair))] = round(statistics.median(runs), 3)
    finally:
        b.close()
    out["far/near"] = round(out["0+7"] / out["0+1"], 3)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--sizes", default="64,512,1024,2048")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--flash-attn", action="store_true")
    ap.add_argument("--spread", action="store_true", help="neighbouring vs distant sequence ids (see above)")
    args = ap.parse_args()
    if args.spread:
        print(json.dumps({"step_ms_at_1024": spread(args.model)}, indent=2))
        return 0
    sizes = [int(x) for x in args.sizes.split(",")]
    n_ctx = max(sizes) + args.steps * args.reps + 64
    opts = BackendOptions(n_ctx=n_ctx, n_seq_max=2, n_threads=args.threads, flash_attn=args.flash_attn)
    split = load_backend(args.model, "llama.cpp", opts)
    unified = load_backend(args.model, "llama.cpp", opts.with_(kv_unified=True, n_ctx=2 * n_ctx))  # cells for both
    solo = load_backend(args.model, "llama.cpp", opts.with_(n_seq_max=1))
    tokens = split.tokenize(FILL * (n_ctx // 8), add_special=False)[:n_ctx]
    out = {"threads": split.n_threads, "flash_attn": args.flash_attn, "steps": args.steps, "sizes": {}}
    try:
        for n in sizes:
            runs = {"one_seq": [], "two_seq": [], "two_unified": [], "one_seq_x2": []}
            for _ in range(args.reps):
                fill(solo, [0], n, tokens)
                runs["one_seq"].append(step_ms(solo, lambda p: [BatchEntry(tokens[1], p, (0,), True)], n, args.steps))
                fill(solo, [0], n, tokens)
                # step k puts two tokens of the one sequence at n + 2k and n + 2k + 1
                runs["one_seq_x2"].append(step_ms(
                    solo, lambda p: [BatchEntry(tokens[1], 2 * p - n, (0,), True),
                                     BatchEntry(tokens[2], 2 * p - n + 1, (0,), True)], n, args.steps // 2))
                for name, b in (("two_seq", split), ("two_unified", unified)):
                    fill(b, [0, 1], n, tokens)
                    runs[name].append(step_ms(
                        b, lambda p: [BatchEntry(tokens[1], p, (0,), True), BatchEntry(tokens[1], p, (1,), True)],
                        n, args.steps))
            med = {k: statistics.median(v) for k, v in runs.items()}
            med["two_seq/one_seq"] = med["two_seq"] / med["one_seq"]
            med["two_unified/one_seq"] = med["two_unified"] / med["one_seq"]
            med["one_seq_x2/one_seq"] = med["one_seq_x2"] / med["one_seq"]
            out["sizes"][str(n)] = {k: round(v, 3) for k, v in med.items()}
    finally:
        for b in (split, unified, solo):
            b.close()
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
