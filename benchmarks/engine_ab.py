"""Engine A/B: this work tree against an earlier revision, interleaved in one run on one machine.

Each round runs, for the base revision and then for this tree, `la-edge bench --quick --json`
(aligned / plain and aligned / naive) and `benchmarks/host_overhead.py --json` (la_edge's own host
work per step, forward pass taken out). Each tree uses its own source and its own C sampler (built
here with CMake), so only the code differs. Reports medians per tree and their ratio.

    python benchmarks/engine_ab.py --base 7a24d0c [--rounds 3] [--model PATH] [--out results.json]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def build_native(tree: str) -> str:
    build = os.path.join(tree, "build", "ab")
    subprocess.run(["cmake", "-S", tree, "-B", build, "-DCMAKE_BUILD_TYPE=Release"], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", build], check=True, stdout=subprocess.DEVNULL)
    return next(os.path.join(build, f) for f in os.listdir(build) if f.startswith("libla_sampler"))


def run_json(tree: str, lib: str, args) -> dict:
    env = {**os.environ, "PYTHONPATH": tree, "LA_EDGE_NATIVE_LIB": lib}
    out = subprocess.run([sys.executable] + args, cwd=tree, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout[out.stdout.index("{"):])


def one_round(tree: str, lib: str, model) -> dict:
    model_args = ["--model", model] if model else []
    bench = run_json(tree, lib, ["-c", "from la_edge.faces.cli import main; main()", "bench", "--quick",
                                 "--json"] + model_args)
    host = run_json(tree, lib, [os.path.join("benchmarks", "host_overhead.py"), "--json", "--background",
                                "--tokens", "200"])
    out = {k: v for k, v in bench["ratios"].items()}
    for row in host["rows"]:
        out[f"host_ms_k{row['k']}"] = row["outside_decode_ms"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="the git revision to compare against")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="la_edge_ab_") as tmp:
        base = os.path.join(tmp, "base")
        subprocess.run(["git", "-C", ROOT, "worktree", "add", "-q", "--detach", base, args.base], check=True)
        try:
            trees = {"base": base, "head": ROOT}
            libs = {name: build_native(tree) for name, tree in trees.items()}
            samples = {name: [] for name in trees}
            for r in range(args.rounds):
                for name, tree in trees.items():
                    print(f"engine_ab: round {r + 1}/{args.rounds}, {name}", file=sys.stderr, flush=True)
                    samples[name].append(one_round(tree, libs[name], args.model))
        finally:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", base], check=False)
    keys = sorted(set(samples["base"][0]) & set(samples["head"][0]))
    med = {name: {k: statistics.median(s[k] for s in rows) for k in keys} for name, rows in samples.items()}
    result = {"base": args.base, "rounds": args.rounds, "model": args.model or "embedded SmolLM2-135M-Instruct Q4_1",
              "median": med, "head_over_base": {k: med["head"][k] / med["base"][k] for k in keys},
              "samples": samples}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    print("| measure | base | head | head / base |\n|---|---:|---:|---:|")
    for k in keys:
        print(f"| {k} | {med['base'][k]:.3f} | {med['head'][k]:.3f} | {result['head_over_base'][k]:.2f} |")


if __name__ == "__main__":
    main()
