"""`la-edge bench --profile`: host time per decode step, inside the backend's decode vs outside it.

The engine's requests of K = 1, 2, 3 branches on one model, greedy: K = 1 is the principle in the
prompt (r = 0), K = 2 one principle and the plain prompt, K = 3 two principles and the plain
prompt. Aligner.profile() splits each decode step: the native forward pass (llama_decode), the
sampler, and the rest of the wall time between consecutive steps (filling the batch, Python
bookkeeping, locks, thread hand-offs). The count starts after each request's first token, so only
decode steps are counted, not prefill.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

from ...decoding.params import GenerationParams
from ..tables import markdown_table
from .decode import BENCH_PRINCIPLE, BENCH_PROMPTS, EXTRA_PRINCIPLES

TARGET_OUTSIDE_MS = 0.15  # issue 17: host work per decode step on the development CPU
PROFILE_BRANCHES = (1, 2, 3)
REQUESTS = {1: "principle in the prompt, r = 0", 2: "one principle + plain", 3: "two principles + plain"}
SUMS = ("steps", "tokens", "decode_s", "choose_s", "host_s")


def _request(la, prompt: str, k: int, ratio: float):
    """The K-branch request for a prompt (see the module docstring) and its ratio."""
    if k == 1:
        return la.prompts(prompt, BENCH_PRINCIPLE), 0.0
    if k == 2:
        return la.prompts(prompt, BENCH_PRINCIPLE), ratio
    return la.branches(prompt, [BENCH_PRINCIPLE] + EXTRA_PRINCIPLES[:k - 2], ratios=ratio), ratio


def _decode_steps(la, request, params: GenerationParams) -> Dict[str, float]:
    """Aligner.profile() sums over one request's decode steps (after its first token: the profile
    leaves prompt batches out)."""
    la.profile(reset=True)
    for _ in la.steps(request, params)[1]:
        pass
    return la.profile(reset=True)


def per_step(sums: Dict[str, float]) -> Dict[str, float]:
    """Milliseconds per decode step from profile sums, and the share of a step spent outside the decode."""
    steps = sums["steps"] or 1
    decode, choose, host = (1000.0 * sums[k] / steps for k in ("decode_s", "choose_s", "host_s"))
    wall = sums["decode_s"] + sums["choose_s"] + sums["host_s"]
    return {"decode_ms": decode, "sampler_ms": choose, "other_host_ms": host, "outside_decode_ms": choose + host,
            "outside_share": (choose + host) / (decode + choose + host) if decode + choose + host else 0.0,
            "tokens_per_s": sums["tokens"] / wall if wall else 0.0}


def run_profile(model: Optional[str] = None, quick: bool = False, tokens: Optional[int] = None,
                repetitions: Optional[int] = None, ratio: float = 2.0, load: Optional[Dict[str, object]] = None,
                branches: Sequence[int] = PROFILE_BRANCHES) -> Dict[str, object]:
    """Per-step decode and host time for each K, summed over prompts and repetitions (see the module doc).

    K above load's max_branches is skipped (a note says so); each K gets one warm-up request first.
    """
    from ...runtime.aligner import Aligner

    reps = repetitions or (1 if quick else 2)
    n = tokens or (32 if quick else 64)
    prompts = BENCH_PROMPTS[:2] if quick else BENCH_PROMPTS
    load = dict(load or {})
    load.setdefault("n_ctx", 2048)
    la = Aligner.load(model, **{**load, "prompt_cache": False})  # every request decodes its prompts in full
    notes: List[str] = [f"K = {k} skipped: the engine was loaded with max_branches={la.max_branches}"
                        for k in branches if k > la.max_branches]
    out: Dict[str, object] = {"tokens": n, "repetitions": reps, "prompts": len(prompts), "ratio": ratio,
                              "target_outside_decode_ms": TARGET_OUTSIDE_MS, "branches": {}, "notes": notes}
    try:
        params = GenerationParams(temperature=0.0, max_tokens=n, ignore_eos=True)
        for k in (k for k in branches if k <= la.max_branches):
            requests = [_request(la, p, k, ratio) for p in prompts]
            _decode_steps(la, requests[0][0], params.with_(ratio=requests[0][1], max_tokens=8))  # warm-up
            sums = {key: 0 if key in ("steps", "tokens") else 0.0 for key in SUMS}
            for _ in range(reps):
                for request, r in requests:
                    prof = _decode_steps(la, request, params.with_(ratio=r))
                    for key in SUMS:
                        sums[key] += prof[key]
            out["branches"][str(k)] = {"request": REQUESTS.get(k, f"{k - 1} principles + plain"),
                                       **{key: sums[key] for key in SUMS}, **per_step(sums)}
        out.update(backend=la.backend.name, sampler=la.sampler, n_gpu_layers=la.backend.options.n_gpu_layers,
                   n_threads=la.backend.n_threads)
    finally:
        la.close()
    return out


def profile_table(result: Dict[str, object]) -> str:
    """A Markdown table of run_profile(): ms per decode step inside and outside the decode, per K."""
    rows = [[k, v["request"], int(v["steps"]), f"{v['decode_ms']:.3f}", f"{v['sampler_ms']:.3f}",
             f"{v['other_host_ms']:.3f}", f"{v['outside_decode_ms']:.3f}", f"{100 * v['outside_share']:.1f}%",
             f"{v['tokens_per_s']:.1f}"] for k, v in result["branches"].items()]
    text = markdown_table(["K", "request", "decode steps", "decode ms/step", "sampler ms/step",
                           "other host ms/step", "outside decode ms/step", "outside share", "tokens/s"],
                          rows, "rlrrrrrrr")
    target = result["target_outside_decode_ms"]
    verdicts = ", ".join(f"K = {k}: {'met' if v['outside_decode_ms'] <= target else 'not met'}"
                         for k, v in result["branches"].items())
    lines = [text, "", f"target: <= {target} ms outside the decode per step ({verdicts}); {result['sampler']} "
             f"sampler, {result['backend']}, n_gpu_layers={result['n_gpu_layers']}, {result['tokens']} tokens x "
             f"{result['prompts']} prompts x {result['repetitions']} reps per K"]
    return "\n".join(lines + [f"note: {n}" for n in result["notes"]])
