"""The `la-edge eval` subcommand: principle adherence (or --mc preference accuracy) per setting."""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Tuple


DEFAULT_RATIOS = {"--compose": (2.0,), "--turns": (2.0,), "--forbidden-words": (2.0,), "--documents": (1.0,)}
MAX_PARALLEL = 32  # answers in flight; each holds --max-branches KV sequences of --n-ctx cells


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
                    "for plain decoding, the principle in the prompt (r=0) and Linear Alignment at each ratio; "
                    "--compose: several principles and a word to avoid; --turns: the system message over a chat.")
    p.add_argument("--ratios", type=_floats, default=None,
                   help="comma-separated ratios (default: 1,2,4; with --compose, --turns or --forbidden-words: 2; "
                        "with --documents: 1)")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per answer (default: 64)")
    p.add_argument("--limit", type=int, default=None,
                   help="prompts per principle, 8 at most (default: 4); with --mc: items (default: all 16); "
                        "with --compose: prompts per task (default: 4); with --turns: conversations (default: all 3); "
                        "with --documents: items per set (default: all); with --ifeval: prompts, evenly spaced "
                        "(default: all that split cleanly); with --forbidden-words: prompts, evenly spaced "
                        "(default: all)")
    p.add_argument("--principles", type=_names, default=None, help="comma-separated principle ids (default: all)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default: 0)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--mc", action="store_true", help="personal-preference multiple-choice mode")
    mode.add_argument("--compose", action="store_true",
                      help="several principles at once (joined in one sentence vs one branch each, fixed and "
                           "adaptive ratio) and a word to avoid (a 'do not' principle vs --avoid)")
    mode.add_argument("--turns", action="store_true",
                      help="an instruction in the system message over an 8-turn chat: in the system message "
                           "vs taken as the principle (serve --principle-from system)")
    mode.add_argument("--ifeval", action="store_true",
                      help="IFEval's 541 prompts with the instruction split off as the principle, checked by "
                           "IFEval's own rules (needs if-verifiable): prompt/instruction accuracy, strict and loose")
    mode.add_argument("--documents", action="store_true",
                      help="answers faithful to a document (context-aware decoding) on conflicting and agreeing "
                           "passages: no document, the document in the prompt, CAD at each ratio, CAD as published "
                           "(r=1 bare) and adaptive (r=1)")
    mode.add_argument("--forbidden-words", action="store_true",
                      help="words to avoid on a larger set (IFEval's forbidden-word prompts and la-edge's own): "
                           "plain, a 'do not' principle, --avoid and a negative prompt (--negative, g=1+R)")
    p.add_argument("--parallel", type=int, default=1, metavar="N",
                   help="answers decoded together in one batch (default: 1; up to 32; each holds --max-branches "
                        "KV sequences of --n-ctx cells, so lower those for large N)")
    p.add_argument("--ratio-guard", action="store_true",
                   help="also run each ratio with the ratio guard (guidance dropped while the answer repeats; "
                        "principles and --compose modes)")
    p.add_argument("--adaptive-ratio", action="store_true",
                   help="also run each ratio with the adaptive per-token ratio (principles mode)")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    p.add_argument("--out", default=None, metavar="DIR", help="write results.json, results.md and plot.png")
    p.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    from ..flags import add_model_flags, add_request_timeout_flag

    add_request_timeout_flag(p)
    add_model_flags(p, n_ctx=2048)
    p.set_defaults(func=cmd_eval)
    return p


def _run_ifeval(la, config, **kw):
    from .ifeval import run_ifeval

    return run_ifeval(la, config, **kw)


def _run_documents(la, config, **kw):
    from .documents import run_documents

    return run_documents(la, config, **kw)


def _run_avoid(la, config, **kw):
    from .compose import run_avoid

    return run_avoid(la, config, **kw)


def cmd_eval(args: argparse.Namespace) -> int:
    """Run the evaluation and print or write its results."""
    from ...backends.models import resolve_model
    from ..flags import load_aligner
    from .report import markdown, write_outputs
    from ...errors import InvalidParameterError
    from .compose import run_compose
    from .turns import run_turns
    from .runner import EvalConfig, load_tasks, run_mc, run_principles

    modes = ("compose", "turns", "ifeval", "documents", "forbidden_words")
    own = next((f"--{m.replace('_', '-')}" for m in modes if getattr(args, m)), None)
    limit = args.limit if args.limit is not None or args.mc or own not in (None, "--compose") else 4
    ratios = args.ratios if args.ratios is not None else DEFAULT_RATIOS.get(own, (1.0, 2.0, 4.0))
    config = EvalConfig(ratios=ratios, max_tokens=args.max_tokens, limit=limit, seed=args.seed,
                        temperature=args.temperature, principles=args.principles, timeout=args.timeout,
                        adaptive=args.adaptive_ratio, parallel=args.parallel,
                        guard=args.ratio_guard)
    config.validate()
    if not 1 <= args.parallel <= MAX_PARALLEL:
        raise InvalidParameterError(f"--parallel must be in [1, {MAX_PARALLEL}], got {args.parallel}")
    if args.parallel > 1 and (args.mc or args.turns):
        raise InvalidParameterError("--parallel decodes answers of the principles, --compose, --ifeval, "
                                    "--documents and --forbidden-words modes together; --mc and --turns answer one "
                                    "at a time")
    if args.ratio_guard and (args.mc or own not in (None, "--compose")):
        raise InvalidParameterError("--ratio-guard runs in the principles and --compose modes only")
    if own and (args.principles or args.adaptive_ratio):
        raise InvalidParameterError(f"{own} runs its own tasks: drop --principles and --adaptive-ratio")
    if not (args.mc or own):
        load_tasks(1, config.principles)
    if own in ("--ifeval", "--forbidden-words"):  # the avoid set takes IFEval's forbidden-word prompts
        from .ifeval import require

        require()
    model = resolve_model(args.model)
    progress = None if args.quiet else sys.stderr
    args.model = model
    with load_aligner(args, max_requests=max(args.parallel, 1)) as la:
        run = run_mc if args.mc else {None: run_principles, "--compose": run_compose, "--turns": run_turns,
                                      "--ifeval": _run_ifeval, "--documents": _run_documents,
                                      "--forbidden-words": _run_avoid}[own]
        doc = run(la, config, progress=progress, model=model)
    notes: List[str] = write_outputs(doc, args.out) if args.out else []
    for note in notes:
        print(f"la-edge eval: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(doc, ensure_ascii=False))
    else:
        sys.stdout.write(markdown(doc))
    return 0
