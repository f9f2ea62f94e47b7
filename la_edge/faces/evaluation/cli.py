"""The `la-edge eval` subcommand: principle adherence (or --mc preference accuracy) per setting."""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Tuple


def _floats(text: str) -> Tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")


def _names(text: str) -> Tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `eval` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "eval", help="measure principle adherence of plain, r=0 and Linear Alignment decoding",
        description="Evaluate verifiable principles (or, with --mc, personal-preference multiple choice) "
                    "for plain decoding, the principle in the prompt (r=0) and Linear Alignment at each ratio.")
    p.add_argument("--ratios", type=_floats, default=(1.0, 2.0, 4.0), help="comma-separated ratios (default: 1,2,4)")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per answer (default: 64)")
    p.add_argument("--limit", type=int, default=None,
                   help="prompts per principle, 8 at most (default: 4); with --mc: items (default: all 16)")
    p.add_argument("--principles", type=_names, default=None, help="comma-separated principle ids (default: all)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default: 0)")
    p.add_argument("--mc", action="store_true", help="personal-preference multiple-choice mode")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    p.add_argument("--out", default=None, metavar="DIR", help="write results.json, results.md and plot.png")
    p.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    from ..flags import add_model_flags, add_request_timeout_flag

    add_request_timeout_flag(p)
    add_model_flags(p, n_ctx=2048)
    p.set_defaults(func=cmd_eval)
    return p


def cmd_eval(args: argparse.Namespace) -> int:
    """Run the evaluation and print or write its results."""
    from ...backends.models import resolve_model
    from ..flags import load_aligner
    from .report import markdown, write_outputs
    from .runner import EvalConfig, load_tasks, run_mc, run_principles

    limit = args.limit if args.limit is not None or args.mc else 4
    config = EvalConfig(ratios=args.ratios, max_tokens=args.max_tokens, limit=limit, seed=args.seed,
                        temperature=args.temperature, principles=args.principles, timeout=args.timeout)
    config.validate()
    if not args.mc:
        load_tasks(1, config.principles)
    model = resolve_model(args.model)
    progress = None if args.quiet else sys.stderr
    args.model = model
    with load_aligner(args) as la:
        run = run_mc if args.mc else run_principles
        doc = run(la, config, progress=progress, model=model)
    notes: List[str] = write_outputs(doc, args.out) if args.out else []
    for note in notes:
        print(f"la-edge eval: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(doc, ensure_ascii=False))
    else:
        sys.stdout.write(markdown(doc))
    return 0
