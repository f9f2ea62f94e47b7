"""The `la-edge bench` subcommand: its flags and which benchmark each mode runs."""

from __future__ import annotations

import argparse
import json

from ..flags import add_model_flags, load_options


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `bench` subcommand to an argparse subparsers object."""
    b = subparsers.add_parser("bench", help="plain vs naive two-context vs la_edge aligned decoding, one run")
    b.add_argument("--quick", action="store_true", help="a short run (under two minutes here)")
    b.add_argument("--json", action="store_true")
    b.add_argument("--repetitions", type=int, default=None)
    b.add_argument("--tokens", type=int, default=None,
                   help="tokens generated per request (with --scaling: decode calls per batch size)")
    b.add_argument("--ratio", type=float, default=2.0)
    mode = b.add_mutually_exclusive_group()
    mode.add_argument("--sampler", action="store_true", help="per-token sampler time, native vs NumPy")
    mode.add_argument("--scaling", action="store_true", help="raw llama_decode time for 1..16 tokens per step")
    mode.add_argument("--profile", action="store_true",
                      help="per decode step: time inside the backend's decode vs outside it (sampler, Python, "
                           "hand-offs), for K = 1, 2, 3 branches")
    mode.add_argument("--context", type=int, action="append", default=None, metavar="N",
                      help="aligned / plain decode speed with N tokens already in each branch (repeatable)")
    mode.add_argument("--memory", action="store_true",
                      help="peak RSS and tokens/s at f16 / q8_0 KV and 1, 4, 8 requests (the embedded model and "
                           "Gemma-3 when installed, or --model), each in a fresh process")
    mode.add_argument("--chat", action="store_true",
                      help="time to first token per turn of a conversation, with and without the prompt cache")
    b.add_argument("--turns", type=int, default=8, help="--chat: conversation turns (default: %(default)s)")
    b.add_argument("--plot", default=None, help="write a PNG chart here (needs matplotlib; default run and --chat)")
    add_model_flags(b, n_ctx=2048)
    b.set_defaults(func=cmd_bench)
    return b


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the benchmark the flags choose; print JSON (--json) or a Markdown table."""
    if args.plot:
        from ..tables import pyplot

        try:
            pyplot()  # before a long run, not after it
        except ImportError as exc:
            raise SystemExit(f"la-edge bench: --plot: {exc}") from exc
    if args.sampler:
        from .sampler import run, table

        result = run(quick=args.quick)
        print(json.dumps(result, indent=2) if args.json else table(result))
        return 0
    if args.memory:
        from .memory import gemma_path, memory_table, run_memory

        models = [args.model] if args.model else [None] + [p for p in [gemma_path()] if p]
        result = run_memory(models, levels=(1, 4) if args.quick else (1, 4, 8), tokens=args.tokens or 32,
                            n_threads=args.threads)
        print(json.dumps(result, indent=2) if args.json else memory_table(result))
        return 0
    load = load_options(args)
    if args.scaling:
        from .scaling import decode_scaling, scaling_table

        ms = decode_scaling(args.model, steps=args.tokens or 40, load=load)
        print(json.dumps({"llama_decode_ms": ms}, indent=2) if args.json else scaling_table(ms))
        return 0
    if args.profile:
        from .profile import profile_table, run_profile

        result = run_profile(args.model, quick=args.quick, tokens=args.tokens, repetitions=args.repetitions,
                             ratio=args.ratio, load=load)
        print(json.dumps(result, indent=2) if args.json else profile_table(result))
        return 0
    if args.context:
        from .context import context_scaling, context_table

        result = context_scaling(args.model, contexts=tuple(args.context), tokens=args.tokens or 48,
                                 repetitions=args.repetitions or 2, ratio=args.ratio, load=load)
        print(json.dumps(result, indent=2) if args.json else context_table(result))
        return 0
    if args.chat:
        from .chat import chat_plot, chat_table, run_chat

        result = run_chat(args.model, turns=args.turns, tokens=args.tokens or 80, ratio=args.ratio, load=load)
        if args.plot:
            chat_plot([result], args.plot)
        print(json.dumps(result, indent=2) if args.json else chat_table(result))
        return 0
    from .decode import plot, run, table

    result = run(args.model, quick=args.quick, repetitions=args.repetitions, tokens=args.tokens, ratio=args.ratio,
                 load=load)
    if args.plot:
        plot(result, args.plot)
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0
