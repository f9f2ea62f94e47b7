"""Serving benchmark: aggregate tokens/s at 1, 2, 4, 8 concurrent aligned streams over real HTTP.

Starts `la-edge serve`'s app on 127.0.0.1 in-process and drives it with the official openai client.
Tokens are counted from the server's usage (completion_tokens), not from stream events.
Usage: python -m la_edge.faces.bench.server [--tokens 64] [--levels 1,2,4,8] [--json]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import statistics
import time
from typing import Dict, List, Optional

from ..tables import markdown_table

PRINCIPLES = ["Answer in French.", "Be extremely brief.", "Answer like a pirate.", "Use a bullet list.",
              "Explain it to a child.", "Be very formal.", "Mention the ocean.", "Answer in one sentence."]


def _stream_one(client, i: int, tokens: int) -> Dict[str, object]:
    """One aligned stream: a time stamp per token event and the server's own token count."""
    t0 = time.perf_counter()
    stamps: List[float] = []
    completion = 0
    stream = client.chat.completions.create(
        model="la-edge", messages=[{"role": "user", "content": f"Tell me something interesting about topic {i}."}],
        max_tokens=tokens, temperature=0, stream=True, stream_options={"include_usage": True},
        extra_body={"principle": PRINCIPLES[i % len(PRINCIPLES)], "alignment_ratio": 2.0, "ignore_eos": True})
    for ev in stream:
        if ev.usage:
            completion = ev.usage.completion_tokens
        elif ev.choices and ev.choices[0].delta.role is None:  # one event per token (text may be held back)
            stamps.append(time.perf_counter())
    return {"start": t0, "stamps": stamps, "tokens": completion}


def _percentile(values: List[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] if values else 0.0


def run(model: Optional[str] = None, levels=(1, 2, 4, 8), tokens: int = 64) -> Dict[str, object]:
    """Aggregate tokens/s, time to first token and per-token latency at each concurrency level."""
    import openai

    from ...runtime.aligner import Aligner
    from ..server import BackgroundServer, Server

    la = Aligner.load(model, n_ctx=1024, max_requests=max(levels), max_queue=64)
    http = BackgroundServer(Server(la, model_name="la-edge"))
    client = openai.OpenAI(base_url=http.base_url + "/v1", api_key="x", max_retries=0, timeout=600)
    results = {}
    try:
        _stream_one(client, 0, 8)  # warm-up
        for n in levels:
            t0 = time.perf_counter()
            with cf.ThreadPoolExecutor(n) as ex:
                runs = list(ex.map(lambda i: _stream_one(client, i, tokens), range(n)))
            wall = time.perf_counter() - t0
            total = sum(r["tokens"] for r in runs)  # usage.completion_tokens, not events
            ttft = [r["stamps"][0] - r["start"] for r in runs if r["stamps"]]
            gaps = [b - a for r in runs for a, b in zip(r["stamps"], r["stamps"][1:])]
            results[str(n)] = {
                "aggregate_tokens_per_s": total / wall, "ttft_ms_median": 1000 * statistics.median(ttft),
                "token_latency_ms_p50": 1000 * _percentile(gaps, 0.5),
                "token_latency_ms_p95": 1000 * _percentile(gaps, 0.95), "tokens": total,
            }
    finally:
        http.stop()
        la.close()
    base = results[str(levels[0])]["aggregate_tokens_per_s"]
    return {"levels": results, "scaling_vs_1": {k: v["aggregate_tokens_per_s"] / base for k, v in results.items()},
            "tokens_per_request": tokens}


def table(result: Dict[str, object]) -> str:
    """A Markdown table of a run() result."""
    rows = [[k, f"{v['aggregate_tokens_per_s']:.1f}", f"{result['scaling_vs_1'][k]:.2f}", f"{v['ttft_ms_median']:.0f}",
             f"{v['token_latency_ms_p50']:.0f} / {v['token_latency_ms_p95']:.0f}"] for k, v in result["levels"].items()]
    return markdown_table(["concurrent", "aggregate tok/s", "x of 1", "TTFT median (ms)",
                           "token latency p50 / p95 (ms)"], rows, "rrrrr")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--levels", default="1,2,4,8")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    result = run(args.model, tuple(int(x) for x in args.levels.split(",")), args.tokens)
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
