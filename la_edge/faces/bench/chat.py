"""`la-edge bench --chat`: time to first token per turn of a conversation, with and without the prompt cache.

One process, one model, two engines (cache on, cache off). Each turn, four variants answer in turn:
aligned (r) and plain (r = 0, principle in the prompt), each with and without the cache. Answers have
a fixed length (ignore_eos), so every variant's history grows the same way; each variant keeps its
own conversation, as a desktop assistant would.
"""

from __future__ import annotations

from typing import Dict, List, Optional

from ...decoding.params import GenerationParams
from ..tables import markdown_table, pyplot

USER_TURNS = [
    "I am planning a small vegetable garden. Where should I start?",
    "What should I plant first?",
    "How often should I water it?",
    "Some leaves are turning yellow. Why?",
    "How do I keep snails away without poison?",
    "When can I harvest the tomatoes?",
    "What can I do with too many courgettes?",
    "Summarize the plan in a few steps.",
]
SYSTEM = "You are a helpful assistant."
PRINCIPLE = "Be concise and friendly."
VARIANTS = ("aligned, cache", "aligned, no cache", "plain, cache", "plain, no cache")


def run_chat(model: Optional[str] = None, turns: int = 8, tokens: int = 80, ratio: float = 2.0,
             load: Optional[Dict[str, object]] = None) -> Dict[str, object]:
    """Per turn: prompt tokens, cached tokens and TTFT (seconds) of each variant; see the module doc."""
    from ...runtime.aligner import Aligner

    load = dict(load or {})
    load["n_ctx"] = max(load.get("n_ctx") or 0, 2048)
    load.update(max_requests=2)  # cache on: the aligned pair and the plain branch stay parked together
    warm = Aligner.load(model, **{**load, "prompt_cache": True})
    cold = None
    try:
        cold = Aligner.load(model, **{**load, "prompt_cache": False})
        engines = {"aligned, cache": (warm, ratio), "aligned, no cache": (cold, ratio),
                   "plain, cache": (warm, 0.0), "plain, no cache": (cold, 0.0)}
        history = {v: [{"role": "system", "content": SYSTEM}] for v in VARIANTS}
        rows: List[Dict[str, object]] = []
        for t in range(turns):
            row: Dict[str, object] = {"turn": t + 1}
            for v in VARIANTS:
                la, r = engines[v]
                msgs = history[v] + [{"role": "user", "content": USER_TURNS[t % len(USER_TURNS)]}]
                params = GenerationParams(temperature=0.0, ratio=r, max_tokens=tokens, ignore_eos=True)
                res = la.generate(messages=msgs, principle=PRINCIPLE, params=params)
                history[v] = msgs + [{"role": "assistant", "content": res.text}]
                row[v] = {"ttft_s": res.timings["prefill_s"], "prompt_tokens": res.usage["prompt_tokens"],
                          "plain_prompt_tokens": res.usage["plain_prompt_tokens"],
                          "cached_tokens": res.usage["cached_tokens"],
                          "plain_cached_tokens": res.usage["plain_cached_tokens"],
                          "decode_tokens_per_s": res.timings["decode_tokens_per_s"]}
            rows.append(row)
        out: Dict[str, object] = {"model": warm.backend.path, "tokens": tokens, "ratio": ratio, "turns": rows,
                                  "backend": warm.backend.name, "n_threads": warm.backend.n_threads}
    finally:
        warm.close()
        if cold is not None:
            cold.close()
    if turns >= 2:
        last = rows[-1]
        out["last_vs_turn2"] = {v: last[v]["ttft_s"] / rows[1][v]["ttft_s"] for v in VARIANTS}
    return out


def chat_table(result: Dict[str, object]) -> str:
    """A Markdown table of run_chat(): TTFT in ms per turn and variant, prompt and cached tokens."""
    rows = []
    for row in result["turns"]:
        a = row["aligned, cache"]
        rows.append([row["turn"], f"{a['prompt_tokens']} + {a['plain_prompt_tokens']}"]
                    + [f"{row[v]['ttft_s'] * 1000:.0f} ms" for v in VARIANTS]
                    + [f"{a['cached_tokens']} + {a['plain_cached_tokens']}"])
    header = ["turn", "prompt tokens (P + plain)"] + [f"TTFT {v}" for v in VARIANTS] + ["cached (P + plain)"]
    text = markdown_table(header, rows, "r" * len(header))
    if "last_vs_turn2" in result:
        text += (f"\n\nturn {len(result['turns'])} TTFT / turn 2 TTFT: "
                 + ", ".join(f"{v} {x:.2f}x" for v, x in result["last_vs_turn2"].items()))
    return text


def chat_plot(results: List[Dict[str, object]], path: str) -> None:
    """A PNG of TTFT per turn, one panel per model (needs matplotlib)."""
    import os

    plt = pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.4), squeeze=False)
    styles = {"aligned, cache": ("#36c", "-"), "aligned, no cache": ("#36c", "--"),
              "plain, cache": ("#888", "-"), "plain, no cache": ("#888", "--")}
    for ax, res in zip(axes[0], results):
        turns = [r["turn"] for r in res["turns"]]
        for v in VARIANTS:
            color, ls = styles[v]
            ax.plot(turns, [r[v]["ttft_s"] * 1000 for r in res["turns"]], ls, color=color, marker="o", label=v)
        ax.set_title(os.path.basename(str(res["model"])), fontsize=9)
        ax.set_xlabel("turn")
        ax.set_ylabel("time to first token (ms)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
