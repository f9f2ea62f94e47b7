"""`la-edge bench --scaling`: milliseconds of one backend decode call with k single-token sequences."""

from __future__ import annotations

import time
from typing import Dict, Optional, Sequence

from ..tables import markdown_table

SCALING_PROMPT = "The moon is a bright object in the night sky and people like to look at it"


def decode_scaling(model: Optional[str] = None, sizes: Sequence[int] = (1, 2, 4, 8, 16), steps: int = 40,
                   load: Optional[Dict[str, object]] = None) -> Dict[str, float]:
    """{str(k): ms per decode} with k sequences of one token each: what batching can save here."""
    from ...backends import BackendOptions, BatchEntry, load_backend

    load = load or {}
    opts = BackendOptions(n_ctx=512, n_seq_max=max(sizes), n_threads=load.get("n_threads"),
                          n_gpu_layers=load.get("n_gpu_layers", 0), flash_attn=load.get("flash_attn", False),
                          kv_unified=load.get("kv_unified", False))
    b = load_backend(model, load.get("backend", "auto"), opts)
    prompt = b.tokenize(SCALING_PROMPT, False)
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


def scaling_table(ms: Dict[str, float]) -> str:
    """A Markdown table of decode_scaling(): ms per call, tokens/s, and the cost relative to one token."""
    one = ms[min(ms, key=int)]
    rows = [[k, f"{v:.2f}", f"{int(k) * 1000 / v:.1f}", f"{v / one:.2f}x"] for k, v in ms.items()]
    return markdown_table(["tokens per step", "ms per decode", "tokens/s", "x of the smallest"], rows, "rrrr")
