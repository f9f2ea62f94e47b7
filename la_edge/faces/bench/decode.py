"""`la-edge bench`: decode speed of plain, naive two-context and batched aligned decoding, side by side.

All methods run in one process on one model, interleaved per repetition, greedy, same prompts:
plain (a private one-sequence backend), naive (Linear Alignment over two private backends, two
decode calls per step), and the engine's requests of K = 2, 3, 4 branches (one principle, two,
three, each with the plain prompt; one decode call per step for all branches). Beside each K,
the cap: the same K prompts decoded in a private K-sequence backend, one raw K-token decode per
step and nothing else (aligned ÷ cap is the share of the hardware's cap the engine reaches).
"""

from __future__ import annotations

import statistics
from typing import Dict, List, Optional, Sequence

from ...decoding.params import GenerationParams
from ...runtime.branches import tokenize_branches
from ..tables import markdown_table, pyplot
from .timing import Solo, peak_rss_mb, time_forward, time_naive, time_plain, time_request

BENCH_PROMPTS = [
    "Explain how a bicycle stays upright.",
    "Write a short story about a lighthouse keeper.",
    "What are the main causes of inflation?",
]
BENCH_PRINCIPLE = "Explain it to a curious ten-year-old, with one everyday example."
EXTRA_PRINCIPLES = ["Mention one surprising fact.", "Keep a calm, friendly tone."]  # K = 3 and 4
ALIGNED_BRANCHES = (2, 3, 4)


def method_name(k: int) -> str:
    """The result key of the engine's K-branch request: "aligned" for K = 2, else "aligned_k<K>"."""
    return "aligned" if k == 2 else f"aligned_k{k}"


def cap_name(k: int) -> str:
    """The result key of the K-token cap measured side by side (time_forward): "cap_k<K>"."""
    return f"cap_k{k}"


def run(model: Optional[str] = None, quick: bool = False, repetitions: Optional[int] = None,
        tokens: Optional[int] = None, ratio: float = 2.0, load: Optional[Dict[str, object]] = None,
        branches: Sequence[int] = ALIGNED_BRANCHES) -> Dict[str, object]:
    """Measure the methods interleaved; medians over repetitions and prompts.

    `load` holds Aligner.load keyword arguments (faces.flags.load_options); the baselines open the
    same model with the same options, one sequence each. K above load's max_branches is skipped
    (a note says so). Every method gets the same warm-up.
    """
    from ...runtime.aligner import Aligner

    reps = repetitions or (1 if quick else 3)
    n = tokens or (48 if quick else 128)
    prompts = BENCH_PROMPTS[:2] if quick else BENCH_PROMPTS
    load = dict(load or {})
    load.setdefault("n_ctx", 2048)
    la = Aligner.load(model, **{**load, "prompt_cache": False})  # baselines prefill in full
    params = GenerationParams(temperature=0.0, ratio=ratio, max_tokens=n, ignore_eos=True)
    ks = [k for k in branches if k <= la.max_branches]
    notes = [f"K = {k} skipped: the engine was loaded with max_branches={la.max_branches}"
             for k in branches if k > la.max_branches]
    solos: List[Solo] = []
    try:
        solos = [Solo(la.backend) for _ in range(2)] + ([Solo(la.backend, max(ks))] if ks else [])
        pairs = [la.prompts(p, BENCH_PRINCIPLE) for p in prompts]
        toks = [(la.tokenize(pr.principled), la.tokenize(pr.plain)) for pr in pairs]
        requests = {k: [pr if k == 2 else la.branches(p, [BENCH_PRINCIPLE] + EXTRA_PRINCIPLES[:k - 2], ratios=ratio)
                        for p, pr in zip(prompts, pairs)] for k in ks}
        methods = {
            "plain": lambda i, m: time_plain(solos[0], toks[i][0], m),
            "naive": lambda i, m: time_naive(la.chooser, solos[0], solos[1], toks[i][0], toks[i][1], m,
                                             params.with_(max_tokens=m)),
        }

        def engine(k: int):
            return lambda i, m: time_request(la, requests[k][i], params.with_(max_tokens=m))

        def cap(k: int):
            with la.engine.lease() as b:  # tokenized as the engine tokenizes the request
                tokens = [toks[i] if k == 2 else tokenize_branches(b, requests[k][i]) for i in range(len(prompts))]
            return lambda i, m: time_forward(solos[2], tokens[i], m)

        for k in ks:
            methods.update({method_name(k): engine(k), cap_name(k): cap(k)})
        samples: Dict[str, Dict[str, List[float]]] = {name: {"tokens_per_s": [], "ttft_s": []} for name in methods}
        for fn in methods.values():  # the same warm-up for every method
            fn(0, 8)
        for _ in range(reps):
            for i in range(len(prompts)):
                for name, fn in methods.items():
                    for key, value in fn(i, n).items():
                        samples[name][key].append(value)
        sampler, backend, options = la.sampler, la.backend.name, la.backend.options
    finally:
        for s in solos:
            s.close()
        la.close()
    med = {name: {k: statistics.median(v) for k, v in s.items()} for name, s in samples.items()}
    plain = med["plain"]["tokens_per_s"]
    ratios = {f"{name}_vs_plain": m["tokens_per_s"] / plain for name, m in med.items() if name != "plain"}
    if "aligned" in med:
        ratios["aligned_vs_naive"] = med["aligned"]["tokens_per_s"] / med["naive"]["tokens_per_s"]
    for k in ks:  # the share of the cap measured side by side
        ratios[f"{method_name(k)}_vs_cap"] = med[method_name(k)]["tokens_per_s"] / med[cap_name(k)]["tokens_per_s"]
    return {
        "model": model or "embedded SmolLM2-135M-Instruct Q4_1",
        "backend": backend,
        "sampler": sampler,
        "tokens": n, "repetitions": reps, "prompts": len(prompts), "ratio": ratio,
        "kv_unified": options.kv_unified, "flash_attn": options.flash_attn, "n_gpu_layers": options.n_gpu_layers,
        "branches": {"plain": 1, "naive": 2, **{n(k): k for k in ks for n in (method_name, cap_name)}},
        "methods": med,
        "process_peak_rss_mb": peak_rss_mb(),
        "ratios": ratios,
        "notes": notes,
        "samples": samples,
    }


def table(result: Dict[str, object]) -> str:
    """A Markdown table of a run() result, and a line with the settings."""
    plain = result["methods"]["plain"]["tokens_per_s"]
    rows = [[name, result["branches"][name], f"{m['tokens_per_s']:.1f}", f"{m['tokens_per_s'] / plain:.2f}x",
             f"{m['ttft_s'] * 1000:.0f}"] for name, m in result["methods"].items()]
    text = markdown_table(["method", "branches (K)", "tokens/s", "ratio to plain", "time to first token (ms)"],
                          rows, "lrrrr")
    r = result["ratios"]
    vs_naive = f", aligned / naive = {r['aligned_vs_naive']:.2f}x" if "aligned_vs_naive" in r else ""
    settings = (f"{result['sampler']} sampler, {result['tokens']} tokens, {result['repetitions']} reps, "
                f"{result['backend']}, kv_unified={result['kv_unified']}, flash_attn={result['flash_attn']}, "
                f"n_gpu_layers={result['n_gpu_layers']}; process peak RSS {result['process_peak_rss_mb']:.0f} MB")
    by_k = ", ".join(f"K = {result['branches'][n]}: {r[n + '_vs_plain']:.2f}x"
                     for n in result["methods"] if n.startswith("aligned"))
    of_cap = ", ".join(f"K = {result['branches'][n]}: {r[n + '_vs_cap']:.2f}"
                       for n in result["methods"] if n.startswith("aligned") and n + "_vs_cap" in r)
    lines = [text, "", f"aligned / plain ({by_k}){vs_naive} ({settings})"]
    lines += [f"aligned / cap, side by side ({of_cap}): 1.00 = all the batched forward pass allows"] if of_cap else []
    return "\n".join(lines + [f"note: {n}" for n in result["notes"]])


def plot(result: Dict[str, object], path: str) -> None:
    """A PNG bar chart of tokens/s per method (needs matplotlib)."""
    plt = pyplot()
    names = list(result["methods"])
    values = [result["methods"][n]["tokens_per_s"] for n in names]
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 1.5, 3))
    ax.bar(names, values, color=["#888", "#c66"] + ["#bbb" if n.startswith("cap") else "#36c" for n in names[2:]])
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.0f}", ha="center", va="bottom")
    ax.set_ylabel("generated tokens/s")
    ax.margins(y=0.15)
    ax.set_title(f"decode speed, {result['tokens']} tokens, r={result['ratio']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
