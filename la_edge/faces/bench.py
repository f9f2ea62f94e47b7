"""`la-edge bench`: decode speed of plain, naive two-context and batched aligned decoding, side by side.

All methods run in one process on one model, interleaved per repetition, greedy, same prompts;
tokens/s counts generated tokens after the first (decode only), time to first token separately.
"""

from __future__ import annotations

import resource
import statistics
import time
from typing import Dict, List, Optional

from ..decoding.params import GenerationParams
from ..decoding.rng import SplitMix64

BENCH_PROMPTS = [
    "Explain how a bicycle stays upright.",
    "Write a short story about a lighthouse keeper.",
    "What are the main causes of inflation?",
]
BENCH_PRINCIPLE = "Explain it to a curious ten-year-old, with one everyday example."


class _Solo:
    """A private single-sequence backend (the plain and naive baselines), through the Backend protocol."""

    def __init__(self, backend):
        from ..backends import load_backend

        self.b = load_backend(backend.path, backend.name, backend.options.with_(n_seq_max=1))
        self.n_vocab = self.b.n_vocab
        self.pos = 0

    def reset(self) -> None:
        self.b.seq_remove(0)
        self.pos = 0

    def eval(self, tokens: List[int]):
        """Decode tokens in n_batch chunks; the last token's logits row."""
        from ..backends.base import BatchEntry

        for i in range(0, len(tokens), self.b.n_batch):
            chunk = tokens[i:i + self.b.n_batch]
            self.b.decode([BatchEntry(t, self.pos + k, (0,), k == len(chunk) - 1) for k, t in enumerate(chunk)])
            self.pos += len(chunk)
        return self.b.logits_row(len(chunk) - 1)

    def argmax(self, row) -> int:
        import numpy as np  # after llama.cpp loaded (see README, "GPU": numpy first crashed one CUDA image)

        return int(np.argmax(np.ctypeslib.as_array(row, shape=(self.n_vocab,)) if not isinstance(row, np.ndarray)
                             else row))

    def close(self) -> None:
        self.b.close()


def _rss_mb() -> float:
    """Peak resident memory of this whole process so far (ru_maxrss never goes down)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _plain(solo: _Solo, tokens: List[int], n: int) -> Dict[str, float]:
    solo.reset()
    t0 = time.perf_counter()
    tok = solo.argmax(solo.eval(tokens))
    t1 = time.perf_counter()
    for _ in range(n - 1):
        tok = solo.argmax(solo.eval([tok]))
    t2 = time.perf_counter()
    return {"ttft_s": t1 - t0, "tokens_per_s": (n - 1) / (t2 - t1)}


def _naive(la, a: _Solo, b: _Solo, tp: List[int], t0_: List[int], n: int,
           params: GenerationParams) -> Dict[str, float]:
    # Two private backends, two decode calls per step, the same sampler as la_edge.
    choose, rng = la.engine.chooser.choose, SplitMix64(0)
    a.reset()
    b.reset()
    t0 = time.perf_counter()
    tok = choose(a.eval(tp), b.eval(t0_), params, rng, []).token
    t1 = time.perf_counter()
    for _ in range(n - 1):
        tok = choose(a.eval([tok]), b.eval([tok]), params, rng, []).token
    t2 = time.perf_counter()
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
        tokens: Optional[int] = None, ratio: float = 2.0, load: Optional[Dict[str, object]] = None) -> Dict[str, object]:
    """Measure the three methods interleaved; medians over repetitions and prompts.

    `load` holds Aligner.load keyword arguments (faces.flags.load_options); the baselines open the
    same model with the same options, one sequence each. Every method gets the same warm-up.
    """
    from ..runtime.aligner import Aligner

    reps = repetitions or (1 if quick else 3)
    n = tokens or (48 if quick else 128)
    prompts = BENCH_PROMPTS[:2] if quick else BENCH_PROMPTS
    load = dict(load or {})
    load.setdefault("n_ctx", 2048)
    la = Aligner.load(model, **{**load, "prompt_cache": False})  # baselines prefill in full
    params = GenerationParams(temperature=0.0, ratio=ratio, max_tokens=n, ignore_eos=True)
    samples: Dict[str, Dict[str, List[float]]] = {k: {"tokens_per_s": [], "ttft_s": []}
                                                   for k in ("plain", "naive", "aligned")}
    solos: List[_Solo] = []
    try:
        solos = [_Solo(la.backend) for _ in range(2)]
        pairs = [la.prompts(p, BENCH_PRINCIPLE) for p in prompts]
        toks = [(la.engine.tokenize_prompt(pr.principled), la.engine.tokenize_prompt(pr.plain)) for pr in pairs]
        methods = {
            "plain": lambda i, k: _plain(solos[0], toks[i][0], k),
            "naive": lambda i, k: _naive(la, solos[0], solos[1], toks[i][0], toks[i][1], k, params),
            "aligned": lambda i, k: _aligned(la, pairs[i], k, params.with_(max_tokens=k)),
        }
        for fn in methods.values():  # the same warm-up for every method
            fn(0, 8)
        for _ in range(reps):
            for i in range(len(pairs)):
                for name, fn in methods.items():
                    r = fn(i, n)
                    for k in r:
                        samples[name][k].append(r[k])
    finally:
        sampler = la.engine.chooser.path
        backend, options = la.backend.name, la.backend.options
        for s in solos:
            s.close()
        la.close()
    med = {name: {k: statistics.median(v) for k, v in s.items()} for name, s in samples.items()}
    return {
        "model": model or "embedded SmolLM2-135M-Instruct Q4_1",
        "backend": backend,
        "sampler": sampler,
        "tokens": n, "repetitions": reps, "prompts": len(prompts), "ratio": ratio,
        "kv_unified": options.kv_unified, "flash_attn": options.flash_attn, "n_gpu_layers": options.n_gpu_layers,
        "methods": med,
        "process_peak_rss_mb": _rss_mb(),
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
                 f"{result['backend']}, kv_unified={result['kv_unified']}, flash_attn={result['flash_attn']}, "
                 f"n_gpu_layers={result['n_gpu_layers']}; process peak RSS {result['process_peak_rss_mb']:.0f} MB)")
    return "\n".join(lines)


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or exit saying how to install it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise SystemExit(f"--plot needs matplotlib ({exc}); pip install matplotlib") from exc
    return plt


def plot(result: Dict[str, object], path: str) -> None:
    """A PNG bar chart of tokens/s per method (needs matplotlib: pip install matplotlib)."""
    plt = pyplot()
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
                   load: Optional[Dict[str, object]] = None) -> Dict[str, float]:
    """Milliseconds of one decode with k single-token sequences: what batching can save here."""
    from ..backends import BackendOptions, BatchEntry, load_backend

    load = load or {}
    opts = BackendOptions(n_ctx=512, n_seq_max=max(sizes), n_threads=load.get("n_threads"),
                          n_gpu_layers=load.get("n_gpu_layers", 0), flash_attn=load.get("flash_attn", False),
                          kv_unified=load.get("kv_unified", False))
    b = load_backend(model, load.get("backend", "auto"), opts)
    prompt = b.tokenize("The moon is a bright object in the night sky and people like to look at it", False)
    n, out = len(prompt), {}
    try:
        for k in sizes:
            for s in range(max(sizes)):
                b.seq_remove(s)
            for s in range(k):
                b.decode([BatchEntry(t, i, (s,)) for i, t in enumerate(prompt)])
            t0 = time.perf_counter()
            for step in range(steps):
                b.decode([BatchEntry(prompt[-1], n + step, (s,), True) for s in range(k)])
            out[str(k)] = 1000 * (time.perf_counter() - t0) / steps
    finally:
        b.close()
    return out


CONTEXT_FILL = ("The history of the lighthouse keeper's island is long: storms, ships, letters and lamps, "
                "told again by every generation that lived there. ")


def context_scaling(model: Optional[str] = None, contexts=(64, 512, 1024, 2048), tokens: int = 48,
                    repetitions: int = 2, ratio: float = 2.0, load: Optional[Dict[str, object]] = None):
    """Aligned vs plain decode speed with N prompt tokens already in each branch's KV cache.

    All run in one process, interleaved per repetition: plain is a private one-sequence backend,
    r0 the engine's one-sequence request (principle in the prompt, r = 0), aligned its two-sequence
    request (greedy, ignore_eos, decode only after the first token).
    """
    from ..runtime.aligner import Aligner
    from ..runtime.prompts import raw_pair

    load = dict(load or {})
    load["n_ctx"] = max(load.get("n_ctx") or 0, max(contexts) + tokens + 64)
    la = Aligner.load(model, **{**load, "prompt_cache": False})  # baselines prefill in full
    params = GenerationParams(temperature=0.0, ratio=ratio, max_tokens=tokens, ignore_eos=True)
    solo = None
    out: Dict[str, object] = {"tokens": tokens, "repetitions": repetitions, "ratio": ratio, "contexts": {}}
    try:
        solo = _Solo(la.backend)
        filler = la.backend.tokenize(CONTEXT_FILL * (max(contexts) // 8 + 8), add_special=False)
        for n in contexts:
            plain_text = b"".join(la.backend.token_bytes(t) for t in filler[:n]).decode("utf-8", "ignore")
            pair = raw_pair("Answer in French. " + plain_text, plain_text)
            tp = la.engine.tokenize_prompt(pair.principled)
            runs: Dict[str, List[float]] = {"plain": [], "r0": [], "aligned": []}
            for _ in range(repetitions):
                runs["plain"].append(_plain(solo, tp, tokens)["tokens_per_s"])
                runs["r0"].append(_aligned(la, pair, tokens, params.with_(ratio=0.0))["tokens_per_s"])
                runs["aligned"].append(_aligned(la, pair, tokens, params)["tokens_per_s"])
            med = {k: statistics.median(v) for k, v in runs.items()}
            out["contexts"][str(n)] = {"prompt_tokens": len(tp), "plain_tokens_per_s": med["plain"],
                                       "r0_tokens_per_s": med["r0"], "aligned_tokens_per_s": med["aligned"],
                                       "aligned_vs_plain": med["aligned"] / med["plain"],
                                       "aligned_vs_r0": med["aligned"] / med["r0"]}
    finally:
        if solo is not None:
            solo.close()
        out.update(backend=la.backend.name, kv_unified=la.backend.kv_unified, sampler=la.engine.chooser.path)
        la.close()
    shortest = out["contexts"][str(min(contexts))]
    for v in out["contexts"].values():
        v["ratio_vs_shortest"] = v["aligned_vs_plain"] / shortest["aligned_vs_plain"]
        v["r0_ratio_vs_shortest"] = v["aligned_vs_r0"] / shortest["aligned_vs_r0"]
    return out


def context_table(result: Dict[str, object]) -> str:
    """A Markdown table of a context_scaling() result."""
    lines = ["| context (tokens per branch) | plain tok/s | r = 0 tok/s | aligned tok/s | aligned / plain "
             "(vs shortest) | aligned / r = 0 (vs shortest) |", "|---:|---:|---:|---:|---:|---:|"]
    for n, v in result["contexts"].items():
        lines.append(f"| {n} | {v['plain_tokens_per_s']:.1f} | {v['r0_tokens_per_s']:.1f} | "
                     f"{v['aligned_tokens_per_s']:.1f} | {v['aligned_vs_plain']:.2f} ({v['ratio_vs_shortest']:.2f}) | "
                     f"{v['aligned_vs_r0']:.2f} ({v['r0_ratio_vs_shortest']:.2f}) |")
    return "\n".join(lines)
