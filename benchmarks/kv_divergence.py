"""How far a quantized KV cache moves aligned greedy tokens against f16, and whether its prompt cache
stays exact (warm = cold).

For each model and the exactness prompts of tests/integration/test_engine.py (principle and ratio 2,
greedy, `--tokens` tokens, ignore_eos): the first position where the aligned tokens differ from the
f16 run (None: they never do). f16 with flash attention is measured too, since a quantized V cache
turns flash attention on: it separates the kernel's effect from the cache type's. Then the same
prompt twice on one q8_0 engine with the prompt cache (the second run reuses cells) against a cold
q8_0 engine.

Usage: python benchmarks/kv_divergence.py [--tokens 64] [--json benchmarks/results/kv_divergence.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Dict, List, Optional

from la_edge import Aligner, GenerationParams
from la_edge.faces.bench.memory import gemma_path
from la_edge.faces.tables import markdown_table

PROMPTS = [  # tests/integration/test_engine.py
    "Why is the sky blue?",
    "Give me three tips for learning to cook.",
    "What is a prime number?",
    "Write a short note to a friend about the weekend.",
    "How do plants make food?",
]
PRINCIPLE = "Answer like a pirate, in one short paragraph."
VARIANTS = (("f16", False), ("f16", True), ("q8_0", True), ("q4_0", True))  # (kv_type, flash_attn)


def first_divergence(a: List[int], b: List[int]) -> Optional[int]:
    """The first index where the token lists differ (None if one is a prefix of the other)."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)


def _tokens(la: Aligner, prompt: str, params: GenerationParams) -> List[int]:
    if la.template.source is None:  # no chat template: raw prompts
        from la_edge.runtime.prompts import raw_pair

        pair = raw_pair(f"{PRINCIPLE}\n\nQ: {prompt}\nA:", f"Q: {prompt}\nA:")
        return la.generate(params=params, pair=pair).tokens
    return la.generate(prompt, PRINCIPLE, params).tokens


def run(model: Optional[str], tokens: int, chat_template: Optional[str] = None) -> Dict[str, object]:
    params = GenerationParams(temperature=0.0, ratio=2.0, max_tokens=tokens, ignore_eos=True)
    runs: Dict[str, List[List[int]]] = {}
    for kv_type, fa in VARIANTS:
        with Aligner.load(model, n_ctx=1024, kv_type=kv_type, flash_attn=fa, prompt_cache=False,
                          chat_template=chat_template) as la:
            runs[f"{kv_type}{' +FA' if fa else ''}"] = [_tokens(la, p, params) for p in PROMPTS]
            name = la.backend.path
    base = runs["f16"]
    variants = {}
    for key, outs in runs.items():
        if key == "f16":
            continue
        div = [first_divergence(b, o) for b, o in zip(base, outs)]
        same = [d if d is not None else tokens for d in div]
        variants[key] = {"first_divergence": div, "median": statistics.median(same), "min": min(same),
                         "identical_prompts": sum(d is None for d in div)}
    with Aligner.load(model, n_ctx=1024, kv_type="q8_0", chat_template=chat_template) as warm:
        first = [_tokens(warm, p, params) for p in PROMPTS]
        again = [_tokens(warm, p, params) for p in PROMPTS]  # the prompt cache reuses the first runs' cells
        cached = warm.status()["prompt_cache"]
    cold = runs["q8_0 +FA"]
    return {"model": name, "tokens": tokens, "prompts": len(PROMPTS), "variants": variants,
            "q8_0_warm_equals_cold": first == cold and again == cold, "q8_0_cache": cached}


def table(results: List[Dict[str, object]]) -> str:
    rows = []
    for r in results:
        for key, v in r["variants"].items():
            div = ", ".join("-" if d is None else str(d) for d in v["first_divergence"])
            rows.append((r["model"].rsplit("/", 1)[-1], key, div, v["median"], v["identical_prompts"]))
    return markdown_table(["model", "KV cache", f"first divergence from f16 per prompt (- = none in "
                           f"{results[0]['tokens']})", "median", "identical"], rows, "lllrr")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    results = [run(None, args.tokens)]
    gemma = gemma_path()
    if gemma:
        results.append(run(gemma, args.tokens))
    print(table(results))
    for r in results:
        print(f"{r['model'].rsplit('/', 1)[-1]}: q8_0 prompt cache warm = cold: {r['q8_0_warm_equals_cold']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
