"""`la-edge bench --context N ...`: aligned vs plain decode speed with N tokens already in each branch."""

from __future__ import annotations

import statistics
from typing import Dict, List, Optional, Sequence

from ...decoding.params import GenerationParams
from ..tables import markdown_table
from .timing import Solo, time_forward, time_plain, time_request

CONTEXT_FILL = ("The history of the lighthouse keeper's island is long: storms, ships, letters and lamps, "
                "told again by every generation that lived there. ")


def context_scaling(model: Optional[str] = None, contexts: Sequence[int] = (64, 512, 1024, 2048), tokens: int = 48,
                    repetitions: int = 2, ratio: float = 2.0, load: Optional[Dict[str, object]] = None):
    """Aligned vs plain decode speed with N prompt tokens already in each branch's KV cache.

    All run in one process, interleaved per repetition: plain is a private one-sequence backend,
    r0 the engine's one-sequence request (principle in the prompt, r = 0), aligned its two-sequence
    request, cap the same two prompts as raw sequences of a private backend, one 2-token decode per
    step (greedy, ignore_eos, decode only after the first token).
    """
    from ...runtime.aligner import Aligner
    from ...runtime.prompts import raw_pair

    load = dict(load or {})
    load["n_ctx"] = max(load.get("n_ctx") or 0, max(contexts) + tokens + 64)
    la = Aligner.load(model, **{**load, "prompt_cache": False})  # baselines prefill in full
    params = GenerationParams(temperature=0.0, ratio=ratio, max_tokens=tokens, ignore_eos=True)
    solo = pair_solo = None
    out: Dict[str, object] = {"tokens": tokens, "repetitions": repetitions, "ratio": ratio, "contexts": {}}
    try:
        solo, pair_solo = Solo(la.backend), Solo(la.backend, 2)
        filler = solo.b.tokenize(CONTEXT_FILL * (max(contexts) // 8 + 8), add_special=False)
        for n in contexts:
            plain_text = b"".join(solo.b.token_bytes(t) for t in filler[:n]).decode("utf-8", "ignore")
            pair = raw_pair("Answer in French. " + plain_text, plain_text)
            tp, t0 = la.tokenize(pair.principled), la.tokenize(pair.plain)
            runs: Dict[str, List[float]] = {"plain": [], "r0": [], "aligned": [], "cap": []}
            for _ in range(repetitions):
                runs["plain"].append(time_plain(solo, tp, tokens)["tokens_per_s"])
                runs["cap"].append(time_forward(pair_solo, [tp, t0], tokens)["tokens_per_s"])
                runs["r0"].append(time_request(la, pair, params.with_(ratio=0.0))["tokens_per_s"])
                runs["aligned"].append(time_request(la, pair, params)["tokens_per_s"])
            med = {k: statistics.median(v) for k, v in runs.items()}
            out["contexts"][str(n)] = {"prompt_tokens": len(tp), "plain_tokens_per_s": med["plain"],
                                       "r0_tokens_per_s": med["r0"], "aligned_tokens_per_s": med["aligned"],
                                       "aligned_vs_plain": med["aligned"] / med["plain"],
                                       "cap_vs_plain": med["cap"] / med["plain"],
                                       "aligned_vs_cap": med["aligned"] / med["cap"],
                                       "aligned_vs_r0": med["aligned"] / med["r0"]}
        out.update(backend=la.backend.name, kv_unified=la.backend.options.kv_unified, sampler=la.sampler)
    finally:
        for s in (solo, pair_solo):
            if s is not None:
                s.close()
        la.close()
    shortest = out["contexts"][str(min(contexts))]
    for v in out["contexts"].values():
        v["ratio_vs_shortest"] = v["aligned_vs_plain"] / shortest["aligned_vs_plain"]
        v["r0_ratio_vs_shortest"] = v["aligned_vs_r0"] / shortest["aligned_vs_r0"]
    return out


def context_table(result: Dict[str, object]) -> str:
    """A Markdown table of a context_scaling() result."""
    rows = [[n, f"{v['plain_tokens_per_s']:.1f}", f"{v['r0_tokens_per_s']:.1f}", f"{v['aligned_tokens_per_s']:.1f}",
             f"{v['aligned_vs_plain']:.2f} ({v['ratio_vs_shortest']:.2f})",
             f"{v['aligned_vs_r0']:.2f} ({v['r0_ratio_vs_shortest']:.2f})", f"{v['cap_vs_plain']:.2f}",
             f"{v['aligned_vs_cap']:.2f}"] for n, v in result["contexts"].items()]
    return markdown_table(["context (tokens per branch)", "plain tok/s", "r = 0 tok/s", "aligned tok/s",
                           "aligned / plain (vs shortest)", "aligned / r = 0 (vs shortest)", "cap / plain",
                           "aligned / cap"], rows, "rrrrrrrr")
