"""`la-edge bench`: decode speed of plain, naive two-context and batched aligned decoding, side by side.

All methods run in one process on one model, interleaved per repetition, greedy, same prompts;
tokens/s counts generated tokens after the first (decode only), time to first token separately.
"""

from __future__ import annotations

import resource
import statistics
import time
from typing import Dict, List, Optional

import numpy as np

from .params import GenerationParams
from .rng import SplitMix64

BENCH_PROMPTS = [
    "Explain how a bicycle stays upright.",
    "Write a short story about a lighthouse keeper.",
    "What are the main causes of inflation?",
]
BENCH_PRINCIPLE = "Explain it to a curious ten-year-old, with one everyday example."


class _SoloContext:
    """A private single-sequence llama.cpp context (the plain and naive baselines)."""

    def __init__(self, model, n_ctx: int, n_threads: int, flash_attn: bool = False):
        import llama_cpp

        p = llama_cpp.llama_context_default_params()
        p.n_ctx, p.n_batch, p.n_ubatch, p.n_seq_max = n_ctx, 512, 512, 1
        p.n_threads = p.n_threads_batch = n_threads
        p.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn
                             else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        p.no_perf = True
        self._l = llama_cpp
        self.ctx = llama_cpp.llama_init_from_model(model, p)

    def eval(self, tokens: List[int]):
        l = self._l
        for i in range(0, len(tokens), 512):
            chunk = tokens[i:i + 512]
            arr = (l.llama_token * len(chunk))(*chunk)
            rc = l.llama_decode(self.ctx, l.llama_batch_get_one(arr, len(chunk)))
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc}")
        return l.llama_get_logits_ith(self.ctx, -1)

    def close(self):
        self._l.llama_free(self.ctx)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _solo(la) -> _SoloContext:
    b = la.backend
    return _SoloContext(b.model.handle, b.n_ctx, b.n_threads, b.flash_attn)


def _plain(la, tokens: List[int], n: int) -> Dict[str, float]:
    ctx = _solo(la)
    nv = la.backend.n_vocab
    t0 = time.perf_counter()
    row = ctx.eval(tokens)
    tok = int(np.argmax(np.ctypeslib.as_array(row, shape=(nv,))))
    t1 = time.perf_counter()
    for _ in range(n - 1):
        row = ctx.eval([tok])
        tok = int(np.argmax(np.ctypeslib.as_array(row, shape=(nv,))))
    t2 = time.perf_counter()
    ctx.close()
    return {"ttft_s": t1 - t0, "tokens_per_s": (n - 1) / (t2 - t1)}


def _naive(la, tp: List[int], t0_: List[int], n: int, params: GenerationParams) -> Dict[str, float]:
    # Two contexts, two llama_decode calls per step, the same sampler as la_edge.
    a, b = _solo(la), _solo(la)
    choose, rng = la.engine.chooser.choose, SplitMix64(0)
    t0 = time.perf_counter()
    tok = choose(a.eval(tp), b.eval(t0_), params, rng, []).token
    t1 = time.perf_counter()
    for _ in range(n - 1):
        tok = choose(a.eval([tok]), b.eval([tok]), params, rng, []).token
    t2 = time.perf_counter()
    a.close()
    b.close()
    return {"ttft_s": t1 - t0, "tokens_per_s": (n - 1) / (t2 - t1)}


def _aligned(la, pair, n: int, params: GenerationParams) -> Dict[str, float]:
    handle = la.engine.submit(pair, params)
    t0 = time.perf_counter()
    count, t1 = 0, None
    for _ in handle:
        count += 1
        if t1 is None:
            t1 = time.perf_counter()
    t2 = time.perf_counter()
    return {"ttft_s": t1 - t0, "tokens_per_s": (count - 1) / (t2 - t1) if count > 1 else 0.0}


def run(model: Optional[str] = None, quick: bool = False, repetitions: Optional[int] = None,
        tokens: Optional[int] = None, ratio: float = 2.0, n_threads: Optional[int] = None,
        kv_unified: bool = False, flash_attn: bool = False, prefer_native: bool = True) -> Dict[str, object]:
    """Measure the three methods interleaved; medians over repetitions and prompts.

    Baselines use the same flash-attention setting as the aligned engine.
    """
    from .generate import Aligner

    reps = repetitions or (1 if quick else 3)
    n = tokens or (48 if quick else 128)
    prompts = BENCH_PROMPTS[:2] if quick else BENCH_PROMPTS
    la = Aligner.load(model, n_ctx=2048, n_threads=n_threads, kv_unified=kv_unified, flash_attn=flash_attn,
                      prefer_native=prefer_native)
    params = GenerationParams(temperature=0.0, ratio=ratio, max_tokens=n, ignore_eos=True)
    samples: Dict[str, Dict[str, List[float]]] = {k: {"tokens_per_s": [], "ttft_s": []}
                                                   for k in ("plain", "naive", "aligned")}
    rss: Dict[str, float] = {}
    try:
        pairs = [la.prompts(p, BENCH_PRINCIPLE) for p in prompts]
        _aligned(la, pairs[0], 8, params.with_(max_tokens=8))  # warm-up
        for _ in range(reps):
            for pair in pairs:
                tp = la.engine.tokenize_prompt(pair.principled)
                t0 = la.engine.tokenize_prompt(pair.plain)
                for name, fn in (("plain", lambda: _plain(la, tp, n)),
                                 ("naive", lambda: _naive(la, tp, t0, n, params)),
                                 ("aligned", lambda: _aligned(la, pair, n, params))):
                    r = fn()
                    for k in r:
                        samples[name][k].append(r[k])
                    rss[name] = _rss_mb()
    finally:
        sampler = la.engine.chooser.path
        la.close()
    med = {name: {k: statistics.median(v) for k, v in s.items()} for name, s in samples.items()}
    return {
        "model": model or "embedded SmolLM2-135M-Instruct Q4_1",
        "sampler": sampler,
        "tokens": n, "repetitions": reps, "prompts": len(prompts), "ratio": ratio,
        "kv_unified": kv_unified, "flash_attn": flash_attn,
        "methods": {name: dict(m, peak_rss_mb=rss.get(name)) for name, m in med.items()},
        "ratios": {
            "aligned_vs_plain": med["aligned"]["tokens_per_s"] / med["plain"]["tokens_per_s"],
            "aligned_vs_naive": med["aligned"]["tokens_per_s"] / med["naive"]["tokens_per_s"],
            "naive_vs_plain": med["naive"]["tokens_per_s"] / med["plain"]["tokens_per_s"],
        },
        "samples": samples,
    }


def table(result: Dict[str, object]) -> str:
    """A Markdown table of a run() result."""
    lines = ["| method | tokens/s | ratio to plain | time to first token (ms) |", "|---|---:|---:|---:|"]
    plain = result["methods"]["plain"]["tokens_per_s"]
    for name, m in result["methods"].items():
        lines.append(f"| {name} | {m['tokens_per_s']:.1f} | {m['tokens_per_s'] / plain:.2f}x | {m['ttft_s'] * 1000:.0f} |")
    r = result["ratios"]
    lines.append("")
    lines.append(f"aligned / plain = {r['aligned_vs_plain']:.2f}x, aligned / naive = {r['aligned_vs_naive']:.2f}x "
                 f"({result['sampler']} sampler, {result['tokens']} tokens, {result['repetitions']} reps, "
                 f"kv_unified={result['kv_unified']}, flash_attn={result['flash_attn']})")
    return "\n".join(lines)


def plot(result: Dict[str, object], path: str) -> None:
    """A PNG bar chart of tokens/s per method (needs matplotlib: pip install matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise SystemExit(f"--plot needs matplotlib ({exc}); pip install matplotlib") from exc
    names = list(result["methods"])
    values = [result["methods"][n]["tokens_per_s"] for n in names]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(names, values, color=["#888", "#c66", "#36c"])
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.0f}", ha="center", va="bottom")
    ax.set_ylabel("generated tokens/s")
    ax.margins(y=0.15)
    ax.set_title(f"decode speed, {result['tokens']} tokens, r={result['ratio']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def decode_scaling(model: Optional[str] = None, sizes=(1, 2, 4, 8, 16), steps: int = 40,
                   n_threads: Optional[int] = None) -> Dict[str, float]:
    """Milliseconds of one llama_decode with k single-token sequences: what batching can save here."""
    from .backend import BatchEntry
    from .llama_backend import LlamaCppBackend
    from .models import resolve_model

    b = LlamaCppBackend(resolve_model(model), n_ctx=512, n_seq_max=max(sizes), n_threads=n_threads)
    prompt = b.tokenize("The moon is a bright object in the night sky and people like to look at it", False)
    n, out = len(prompt), {}
    try:
        for k in sizes:
            b.clear()
            for s in range(k):
                b.decode([BatchEntry(t, i, (s,)) for i, t in enumerate(prompt)])
            t0 = time.perf_counter()
            for step in range(steps):
                b.decode([BatchEntry(prompt[-1], n + step, (s,), True) for s in range(k)])
            out[str(k)] = 1000 * (time.perf_counter() - t0) / steps
    finally:
        b.close()
    return out
