"""Broken answers in eval results: invented words, a switch of script, a refusal.

distinct-n and rep-4 catch loops, not non-words ("sparkerers"); a word a tokenizer has never seen
whole falls into many pieces (rare: the share of words split into 3+ tokens). Strong guidance can
also leave English for Chinese or open with an apology: counted per answer. Per setting of an
`la-edge eval` results.json (any mode with samples that hold "setting" and "text"):

    PYTHONPATH=. python benchmarks/rare_words.py \
        benchmarks/results/eval_forbidden_smollm2_strong/results.json [--model PATH]
"""

import argparse
import json
import re

WORD = re.compile(r"[A-Za-z]+")
CJK = re.compile(r"[\u3000-\u9fff\uac00-\ud7af\uff00-\uffef]")  # CJK, kana, hangul, full-width forms
# A refusal: an apology or "I cannot" in the answer's first 100 characters.
REFUSAL = re.compile(r"\b(sorry|i cannot|i can'?t|as an ai|i regret|i apologi[sz]e|not within my)\b", re.IGNORECASE)


def refuses(text: str) -> bool:
    """True when the answer opens with a refusal (the pattern within its first 100 characters)."""
    return bool(REFUSAL.search(text[:100]))


def breakage(texts) -> str:
    """'CJK/n | refusals/n': the answers in CJK script and those opening with a refusal."""
    return f"{sum(bool(CJK.search(t)) for t in texts)}/{len(texts)} | {sum(refuses(t) for t in texts)}/{len(texts)}"


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
    print("| setting | words | tokens per word | rare words | answers in CJK script | answers opening with a refusal |")
    print("|---|---|---|---|---|---|")
    for setting in dict.fromkeys(x["setting"] for x in samples):
        texts = [x["text"] for x in samples if x["setting"] == setting]
        words = [w for t in texts for w in WORD.findall(t)]
        pieces = [len(model.tokenize(" " + w.lower(), False, False)) for w in words]
        rare = sum(n >= 3 for n in pieces) / max(1, len(pieces))
        print(f"| {setting} | {len(words)} | {sum(pieces) / max(1, len(pieces)):.2f} | {100 * rare:.1f}% "
              f"| {breakage(texts)} |")
    model.close()


if __name__ == "__main__":
    main()
