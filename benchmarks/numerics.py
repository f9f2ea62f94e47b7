"""Does batching change results? Measures what README "Batching and numerics" reports.

    python benchmarks/numerics.py            # prints JSON

(a) max |logit difference| of the plain branch after prefill, two sequences in one context
    (split vs unified KV cache) against a private single-sequence context;
(b) greedy tokens of 8 requests arriving staggered (seeded) vs each run alone, with the
    newcomer's prefill in its own decode (default) or mixed into the running batch.
"""

import json
import random

import os
import sys

import numpy as np

from la_edge import Aligner, GenerationParams  # noqa: E402

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
            rows = []
            inner = la.engine.chooser
            la.engine.chooser = type("Spy", (), {"path": inner.path, "choose": lambda self, zp, z0, *a: (
                rows.append(np.ctypeslib.as_array(z0, shape=(la.backend.n_vocab,)).copy()), inner.choose(zp, z0, *a))[1]})()
            la.generate(params=GenerationParams(temperature=0.0, max_tokens=1), pair=pair)
            la.engine.chooser = inner
            solo = SeparateContext(la.backend.model.handle, 1024, la.backend.n_threads)
            ref = solo.eval(la.engine.tokenize_prompt(pair.plain))
            worst = max(worst, float(np.abs(rows[0] - ref).max()))
            solo.close()
    finally:
        la.close()
    return worst


def staggered_divergence(mix_prefill: bool, trials: int = 3):
    la = Aligner.load(n_ctx=1024, max_requests=8)
    la.engine.mix_prefill = mix_prefill
    p = GenerationParams(temperature=0.0, max_tokens=32)
    pairs = [la.prompts("Tell me about the moon.", pr) for pr in PRINCIPLES]
    alone = [[e.token for e in la.engine.submit(pair, p)] for pair in pairs]
    out = []
    for trial in range(trials):
        rnd = random.Random(trial)
        handles = []
        for pair in pairs:
            handles.append(la.engine.submit(pair, p))
            for _ in range(rnd.randint(0, 4)):
                la.engine.step()
        while la.engine.step():
            pass
        together = [[e.token for e in h] for h in handles]
        out.append([next((k for k, (x, y) in enumerate(zip(a, t)) if x != y), None) for a, t in zip(alone, together)])
    la.close()
    return out


if __name__ == "__main__":
    print(json.dumps({
        "plain_branch_max_abs_logit_diff": {"split": plain_branch_error(False), "unified": plain_branch_error(True)},
        "first_divergent_token_per_request": {"separate_prefill": staggered_divergence(False),
                                              "mix_prefill": staggered_divergence(True)},
    }, indent=2))
