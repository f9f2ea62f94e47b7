"""Does batching change results? Measures what README "Batching and numerics" reports.

    python benchmarks/numerics.py            # prints JSON

(a) max |logit difference| of the plain branch after prefill, two sequences in one context
    (split vs unified KV cache) against a private single-sequence context;
(b) greedy tokens of 8 requests arriving staggered (seeded) vs each run alone, with the
    newcomer's prefill in its own decode (default) or mixed into the running batch;
(c) `--split [MODEL]`: a prompt decoded in two calls split at k vs one call (README, "Prompt cache").
"""

import json
import random
import time

import os
import sys

import numpy as np

from la_edge import Aligner, GenerationParams  # noqa: E402

from rowspy import recorded_rows  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "integration"))
from reference import SeparateContext  # noqa: E402  (the tests' own slow path)

PROMPTS = ["Why is the sky blue?", "Tell me about the moon.", "What is a prime number?"]
PRINCIPLES = ["Answer in French.", "Be extremely brief.", "Answer like a pirate.", "Use a bullet list.",
              "Explain it to a child.", "Be very formal.", "Mention the ocean.", "Answer in one sentence."]


def plain_branch_error(kv_unified: bool) -> float:
    la = Aligner.load(n_ctx=1024, kv_unified=kv_unified)
    worst = 0.0
    try:
        for prompt in PROMPTS:
            pair = la.prompts(prompt, PRINCIPLES[0])
            with recorded_rows(la) as rows:
                la.generate(params=GenerationParams(temperature=0.0, max_tokens=1), pair=pair)
            solo = SeparateContext(la.backend.model.handle, 1024, la.backend.n_threads)
            ref = solo.eval(la.tokenize(pair.plain))
            worst = max(worst, float(np.abs(rows[0][1] - ref).max()))
            solo.close()
    finally:
        la.close()
    return worst


def wait_steps(la, n: int, timeout: float = 30.0) -> None:
    """Wait until the engine made n more decode calls (or has nothing left to run)."""
    target, end = la.steps_done + n, time.monotonic() + timeout
    while la.steps_done < target and la.status()["active"] + la.status()["queued"] and time.monotonic() < end:
        time.sleep(0.0005)


def staggered_divergence(mix_prefill: bool, trials: int = 3):
    la = Aligner.load(n_ctx=1024, max_requests=8)
    la.engine.mix_prefill = mix_prefill
    p = GenerationParams(temperature=0.0, max_tokens=32)
    pairs = [la.prompts("Tell me about the moon.", pr) for pr in PRINCIPLES]
    alone = [[e.token for e in la.steps(pair, p)[1]] for pair in pairs]
    out = []
    for trial in range(trials):
        rnd = random.Random(trial)
        handles = []
        for pair in pairs:
            handles.append(la.steps(pair, p)[0])
            wait_steps(la, rnd.randint(0, 4))  # the engine thread runs meanwhile: arrivals are staggered
        together = [[e.token for e in h] for h in handles]
        out.append([next((k for k, (x, y) in enumerate(zip(a, t)) if x != y), None) for a, t in zip(alone, together)])
    la.close()
    return out


def split_prompt_error(model=None, n_tokens=177, splits=(1, 2, 16, 32, 64, 97, 128, 150, 175, 176)):
    """(c) max |logit diff| of a prompt's last token when it is decoded in two calls split at k,
    against one call (one sequence, the backend directly). k = n - 1 leaves the last token alone."""
    from la_edge.backends import BackendOptions, load_backend
    from la_edge.backends.base import BatchEntry

    from la_edge.backends.models import default_model_path

    b = load_backend(model or default_model_path(), "auto", BackendOptions(n_ctx=512, n_seq_max=1))
    try:
        tokens = b.tokenize("The quick brown fox jumps over the lazy dog and keeps running. " * 30)[:n_tokens]
        n = len(tokens)

        def last_row(chunks):
            b.seq_remove(0)
            pos = 0
            for c in chunks:
                b.decode([BatchEntry(t, pos + i, (0,), pos + i == n - 1) for i, t in enumerate(c)])
                pos += len(c)
            row = b.logits_row(len(chunks[-1]) - 1)
            return np.ctypeslib.as_array(row, shape=(b.n_vocab,)).copy() if not isinstance(row, np.ndarray) else row

        whole = last_row([tokens])
        return {str(k): float(np.abs(last_row([tokens[:k], tokens[k:]]) - whole).max()) for k in splits if k < n}
    finally:
        b.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--split"]:  # python benchmarks/numerics.py --split [MODEL.gguf]
        print(json.dumps({"split_prompt_max_abs_logit_diff": split_prompt_error(sys.argv[2] if len(sys.argv) > 2
                                                                                 else None)}, indent=2))
        sys.exit(0)
    print(json.dumps({
        "plain_branch_max_abs_logit_diff": {"split": plain_branch_error(False), "unified": plain_branch_error(True)},
        "first_divergent_token_per_request": {"separate_prefill": staggered_divergence(False),
                                              "mix_prefill": staggered_divergence(True)},
    }, indent=2))
