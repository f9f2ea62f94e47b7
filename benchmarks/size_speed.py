"""Model size -> speed: aligned / plain and aligned / the hardware's two-token cap, per model and threads.

For each model (the embedded SmolLM2-135M, Gemma-3-270M when installed, the 1.5B witness when
fetched) and each thread count, one fresh process runs `la-edge bench --quick --json` (plain,
naive two-context, aligned K = 2, 3, 4, interleaved) and one runs `la-edge bench --scaling --json`
(raw llama_decode of 1..16 tokens). The cap of K-branch decoding is what aligned / plain would be
if the engine cost nothing beyond the batched forward pass: the bench measures it side by side (the
same K prompts as raw sequences, one decode call of K tokens per step: `cap_k<K>`); `--scaling`'s
t(1 token) / t(K tokens) at a short context is kept beside it (scaling_cap).

    python benchmarks/size_speed.py [--threads 1,2] [--kv-type f16] [--only SmolLM2,Gemma,Qwen] [--out DIR]

Writes DIR/size_speed.json and DIR/size_speed.png (needs matplotlib). Run it on an idle machine.
"""

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WITNESS = os.path.expanduser("~/.cache/la_edge/qwen2.5-coder-1.5b-instruct-q4.gguf")


def models():
    """(label, path or None for the embedded model, parameters in millions) of the models present."""
    sys.path.insert(0, ROOT)
    from la_edge.faces.bench.memory import gemma_path

    out = [("SmolLM2-135M Q4_1", None, 135, [])]
    gemma = gemma_path()
    if gemma:  # the pretrained GGUF has no chat template of its own
        out.append(("Gemma-3-270M Q4_K_M", gemma, 270, ["--chat-template", "gemma"]))
    witness = os.environ.get("LA_EDGE_WITNESS", WITNESS)
    if os.path.exists(witness):
        out.append(("Qwen2.5-Coder-1.5B Q4 (witness)", witness, 1540, []))
    return out


def bench(args, model, threads, kv_type, extra=()):
    cmd = [sys.executable, "-m", "la_edge", "bench", "--json", "--threads", str(threads), "--kv-type", kv_type] \
        + args + list(extra) + (["--model", model] if model else [])
    out = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, check=True, capture_output=True,
                         text=True, timeout=1800).stdout
    return json.loads(out[out.index("{"):])


def measure(model, threads, kv_type, extra=()):
    """One model at one thread count: the quick bench's ratios, its caps measured side by side (the
    same prompts as K raw sequences, one decode of K tokens per step), and `--scaling`'s caps."""
    run = bench(["--quick", "--repetitions", "2"], model, threads, kv_type, extra)
    ms = bench(["--scaling", "--tokens", "20"], model, threads, kv_type, extra)["llama_decode_ms"]
    ms = {int(k): v for k, v in ms.items()}
    scaling = {k: ms[1] / ms[k] for k in (2, 4) if k in ms}
    from la_edge.faces.bench.decode import cap_name, method_name  # the bench's own result keys

    ratios = run.get("ratios", {})
    aligned = {k: ratios.get(f"{method_name(k)}_vs_plain") for k in (2, 3, 4)}
    return {"threads": threads, "kv_type": kv_type, "decode_ms": ms,
            "cap": {k: ratios[f"{cap_name(k)}_vs_plain"] for k in (2, 3, 4) if f"{cap_name(k)}_vs_plain" in ratios},
            "scaling_cap": scaling, "aligned_vs_plain": aligned,
            "aligned_vs_cap": {k: ratios[f"{method_name(k)}_vs_cap"] for k in (2, 3, 4)
                               if f"{method_name(k)}_vs_cap" in ratios},
            "aligned_vs_naive": ratios.get("aligned_vs_naive"),
            "plain_tokens_per_s": run.get("methods", {}).get("plain", {}).get("tokens_per_s")}


def plot(rows, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib is not installed"
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for threads in sorted({r["threads"] for r in rows}):
        sel = sorted((r for r in rows if r["threads"] == threads), key=lambda r: r["params_m"])
        x = [r["params_m"] for r in sel]
        a.plot(x, [r["aligned_vs_plain"][2] for r in sel], "o-", label=f"aligned K=2, {threads} thread(s)")
        a.plot(x, [r["cap"].get(2) for r in sel], "s--", label=f"cap (side by side), {threads} thread(s)")
        b.plot(x, [r["aligned_vs_cap"].get(2) for r in sel], "o-", label=f"{threads} thread(s)")
    for ax, title in ((a, "aligned ÷ plain, and the cap"), (b, "aligned ÷ cap (1 = the forward pass only)")):
        ax.set_xscale("log")
        ax.set_xlabel("model parameters (millions)")
        ax.set_title(title)
        ax.legend(fontsize=7)
    b.axhline(0.95, color="grey", lw=0.8, ls=":")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default: 1,2)")
    ap.add_argument("--kv-type", default="f16", choices=("f16", "q8_0"))
    ap.add_argument("--only", default=None, help="comma-separated model name prefixes (default: all present)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args()
    rows = []
    only = [x.strip().lower() for x in args.only.split(",")] if args.only else None
    for label, path, params_m, extra in models():
        if only and not any(label.lower().startswith(o) for o in only):
            continue
        for threads in (int(t) for t in args.threads.split(",")):
            try:
                row = {"model": label, "params_m": params_m, **measure(path, threads, args.kv_type, extra)}
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                print(f"{label}, {threads} thread(s): failed: {exc}", file=sys.stderr)
                continue
            rows.append(row)
            show = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
            print(f"{label}, {threads} thread(s): aligned/plain {show(row['aligned_vs_plain'][2])}, "
                  f"cap {show(row['cap'].get(2))}, aligned/cap {show(row['aligned_vs_cap'].get(2))}", file=sys.stderr)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "size_speed.json"), "w") as f:
        json.dump({"cpu": _cpu(), "kv_type": args.kv_type, "rows": rows}, f, indent=2)
    note = plot(rows, os.path.join(args.out, "size_speed.png"))
    if note:
        print(note, file=sys.stderr)
    print(json.dumps(rows, indent=2))


def _cpu():
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
        return f"{name}, {os.cpu_count()} cores"
    except OSError:
        return f"{os.cpu_count()} cores"


if __name__ == "__main__":
    main()
