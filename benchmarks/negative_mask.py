"""The negative prompt on `eval --forbidden-words` prompts under one plausibility mask.

`la-edge eval --forbidden-words` runs the nucleus and top-p 1; this runs the negative setting alone
under any mask (`--plausibility-temperature` widens the nucleus while it still ranks by z_pos;
`--plausibility-min-p` drops tokens under alpha times the top one) and counts what breaks: answers
in CJK script and answers opening with a refusal.

    PYTHONPATH=. python benchmarks/negative_mask.py --cfg-scale 9 --plausibility-top-p 1 \
        --plausibility-min-p 0.01 --limit 24 --model WITNESS
"""

import argparse
import json

from rare_words import breakage


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--cfg-scale", type=float, default=9.0)
    ap.add_argument("--plausibility-top-p", type=float, default=0.8)
    ap.add_argument("--plausibility-temperature", type=float, default=None)
    ap.add_argument("--plausibility-min-p", type=float, default=0.0)
    ap.add_argument("--limit", type=int, default=24)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--numpy", action="store_true", help="sample with the NumPy reference, not the C sampler")
    ap.add_argument("--out", default=None, help="write every answer as JSON")
    args = ap.parse_args()
    from la_edge import Aligner, GenerationParams
    from la_edge.faces.evaluation import compose
    from la_edge.faces.evaluation.runner import run_all

    tasks = compose.load_avoid_set(args.limit)
    params = GenerationParams(temperature=0.0, seed=0, max_tokens=64, plausibility_top_p=args.plausibility_top_p,
                              plausibility_temperature=args.plausibility_temperature,
                              plausibility_min_p=args.plausibility_min_p)
    with Aligner.load(args.model, n_ctx=4096, max_requests=8, n_threads=args.threads,
                      prefer_native=not args.numpy) as la:
        jobs = [{"params": params, "branches": la.negative(t.prompt, negative=t.avoid, cfg_scale=args.cfg_scale)}
                for t in tasks]
        rows = run_all(la, jobs, 8, None, compose.collect)
    setting = f"negative g={args.cfg_scale:g}"
    rows = [compose.score_avoid(r, t, setting) for r, t in zip(rows, tasks)]
    n = len(rows)
    print(f"{setting}, plausibility top-p {args.plausibility_top_p:g}, T_m {args.plausibility_temperature}, "
          f"min-p {args.plausibility_min_p:g}: "
          f"answers using a word {sum(r['used'] for r in rows)}/{n}, words per answer "
          f"{sum(r['count'] for r in rows) / n:.2f}, CJK script | refusal first: {breakage([r['text'] for r in rows])}")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"args": vars(args), "samples": rows}, f, indent=1)


if __name__ == "__main__":
    main()
