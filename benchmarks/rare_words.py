"""Invented words in eval answers: the share of words the model's tokenizer splits into 3+ tokens.

distinct-n and rep-4 catch loops, not non-words ("sparkerers"); a word a tokenizer has never seen
whole falls into many pieces. Per setting of an `la-edge eval` results.json (any mode with samples
that hold "setting" and "text"):

    python benchmarks/rare_words.py benchmarks/results/eval_forbidden_smollm2_strong/results.json [--model PATH]
"""

import argparse
import json
import re

WORD = re.compile(r"[A-Za-z]+")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results")
    ap.add_argument("--model", default=None, help="the GGUF whose tokenizer splits (default: the embedded model)")
    args = ap.parse_args()
    from la_edge.backends.llamacpp import LlamaModel
    from la_edge.backends.models import resolve_model

    model = LlamaModel(resolve_model(args.model))
    doc = json.load(open(args.results, encoding="utf-8"))
    samples = doc.get("samples", []) + doc.get("avoid_samples", [])
    for setting in dict.fromkeys(x["setting"] for x in samples):
        words = [w for x in samples if x["setting"] == setting for w in WORD.findall(x["text"])]
        pieces = [len(model.tokenize(" " + w.lower(), False, False)) for w in words]
        rare = sum(n >= 3 for n in pieces) / max(1, len(pieces))
        print(f"| {setting} | {len(words)} | {sum(pieces) / max(1, len(pieces)):.2f} | {100 * rare:.1f}% |")
    model.close()


if __name__ == "__main__":
    main()
