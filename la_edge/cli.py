"""The `la-edge` command line: generate, doctor (and bench, serve where installed)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from .errors import LaEdgeError
from .params import GenerationParams

# CLI flag -> GenerationParams field; types and defaults come from the parameters object.
PARAM_FLAGS = {
    "--ratio": ("ratio", float, "alignment ratio r in z = z_P + r(z_P - z_0); 0 = principle in prompt only"),
    "--temperature": ("temperature", float, "sampling temperature; 0 = greedy"),
    "--top-k": ("top_k", int, "keep the k most likely aligned tokens (0 = off)"),
    "--top-p": ("top_p", float, "nucleus sampling over aligned logits (1 = off)"),
    "--min-p": ("min_p", float, "drop tokens below min_p x the top probability (0 = off)"),
    "--repeat-penalty": ("repeat_penalty", float, "llama.cpp repeat penalty (1 = off)"),
    "--frequency-penalty": ("frequency_penalty", float, "OpenAI frequency penalty (0 = off)"),
    "--presence-penalty": ("presence_penalty", float, "OpenAI presence penalty (0 = off)"),
    "--seed": ("seed", int, "random seed (default: random, reported in --json)"),
    "--max-tokens": ("max_tokens", int, "maximum tokens to generate"),
    "--plausibility-top-p": ("plausibility_top_p", float, "nucleus of the principled distribution"),
    "--plausibility-temperature": ("plausibility_temperature", float, "temperature of that nucleus (default: T, or 1 if T = 0)"),
    "--top-logprobs": ("top_logprobs", int, "alternatives per token in --json logprobs (0..20)"),
}


def add_param_flags(p: argparse.ArgumentParser) -> None:
    defaults = GenerationParams()
    for flag, (name, typ, help_) in PARAM_FLAGS.items():
        p.add_argument(flag, dest=name, type=typ, default=None,
                       help=f"{help_} (default: {getattr(defaults, name)})")
    p.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    p.add_argument("--ignore-eos", action="store_true", default=None, help="do not stop at end-of-generation tokens")


def params_from_args(args: argparse.Namespace) -> GenerationParams:
    """Build the validated parameters object from parsed flags (unset flags keep defaults)."""
    given = {name: getattr(args, name) for name, _, _ in PARAM_FLAGS.values() if getattr(args, name) is not None}
    if args.stop:
        given["stop"] = tuple(args.stop)
    if args.ignore_eos:
        given["ignore_eos"] = True
    return GenerationParams(**given)


def add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", default=None,
                   help="GGUF file or exported ONNX folder (default: embedded SmolLM2-135M-Instruct Q4_1)")
    p.add_argument("--backend", choices=("auto", "llama.cpp", "onnx"), default="auto",
                   help="auto: ONNX for a folder made by `la-edge export onnx`, llama.cpp for a .gguf")
    p.add_argument("--n-ctx", type=int, default=4096, help="context size in tokens of each sequence")
    p.add_argument("--kv-unified", action="store_true",
                   help="one KV buffer for all sequences (less memory; logits then depend on batch neighbours)")
    p.add_argument("--n-gpu-layers", type=int, default=0, help="layers to offload to a GPU build (CUDA/Metal)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--flash-attn", action="store_true", help="enable flash attention")
    p.add_argument("--numpy-sampler", action="store_true", help="use the NumPy reference sampler")
    p.add_argument("--verbose", action="store_true", help="show llama.cpp logs")


def _is_onnx(args) -> bool:
    import os

    if getattr(args, "backend", "auto") != "auto":
        return args.backend == "onnx"
    return bool(args.model) and (str(args.model).endswith(".onnx") or os.path.isdir(args.model))


def _load(args, max_requests: int = 1):
    from .generate import Aligner

    if _is_onnx(args):
        from .onnx_backend import make_aligner

        return make_aligner(args.model, n_ctx=args.n_ctx, max_requests=max_requests, n_threads=args.threads,
                            prefer_native=not args.numpy_sampler)
    return Aligner.load(args.model, n_ctx=args.n_ctx, n_gpu_layers=args.n_gpu_layers, n_threads=args.threads,
                        flash_attn=args.flash_attn, kv_unified=args.kv_unified,
                        prefer_native=not args.numpy_sampler, verbose=args.verbose,
                        max_requests=max_requests)


def cmd_generate(args: argparse.Namespace) -> int:
    params = params_from_args(args)
    la = _load(args)
    if args.raw:
        from .prompts import raw_pair

        pair = raw_pair(args.prompt, args.plain_prompt)
    else:
        pair = la.prompts(args.prompt, args.principle, system=args.system)
    if args.json:
        result = la.generate(params=params, pair=pair)
        print(json.dumps(result.to_dict(), ensure_ascii=False))
        return 0
    for chunk in la.stream(params=params, pair=pair):
        sys.stdout.write(chunk.text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import report

    info = report(args.model)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k}: {v}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .server import serve

    la = _load(args, max_requests=args.max_requests)
    la.engine.max_queue = args.max_queue
    name = args.model_name or (args.model and __import__("os").path.basename(args.model)) or "smollm2-135m-instruct"
    serve(la, host=args.host, port=args.port, model_name=name, api_key=args.api_key)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.sampler:
        from .bench_sampler import run as run_sampler, table as sampler_table

        result = run_sampler(quick=args.quick)
        print(json.dumps(result, indent=2) if args.json else sampler_table(result))
        return 0
    from .bench import decode_scaling, plot, run, table

    if args.scaling:
        ms = decode_scaling(args.model, n_threads=args.threads)
        print(json.dumps({"llama_decode_ms": ms}, indent=2) if args.json else
              "\n".join(f"{k:>2} tokens/step: {v:7.2f} ms  ({int(k) * 1000 / v:6.1f} tok/s)" for k, v in ms.items()))
        return 0
    result = run(args.model, quick=args.quick, repetitions=args.repetitions, tokens=args.tokens,
                 ratio=args.ratio, n_threads=args.threads, kv_unified=args.kv_unified, flash_attn=args.flash_attn,
                 prefer_native=not args.numpy_sampler)
    if args.plot:
        plot(result, args.plot)
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0


def _add_export(sub) -> None:
    # export/ ships as la_edge_export; torch and friends load only when an export runs.
    try:
        from la_edge_export.cli import add_export_parser
    except ImportError:
        try:
            from export.cli import add_export_parser  # running from a source checkout
        except ImportError:
            return
    add_export_parser(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="la-edge", description="Linear Alignment decoding on llama.cpp")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate an answer aligned to a principle")
    g.add_argument("prompt", help="the user message (with --raw: the principled prompt string)")
    g.add_argument("--principle", default=None, help="the preference in plain words")
    g.add_argument("--system", default=None, help="system message (the principle is appended to it)")
    g.add_argument("--raw", action="store_true", help="no chat template: PROMPT is the principled prompt")
    g.add_argument("--plain-prompt", default=None, help="with --raw: the principle-free prompt")
    g.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")
    add_param_flags(g)
    add_model_flags(g)
    g.set_defaults(func=cmd_generate)

    s = sub.add_parser("serve", help="OpenAI-compatible HTTP server (127.0.0.1 by default)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY'")
    s.add_argument("--max-requests", type=int, default=8, help="concurrent requests decoded together")
    s.add_argument("--max-queue", type=int, default=32, help="waiting requests beyond which 429 is returned")
    s.add_argument("--model-name", default=None, help="id reported by /v1/models")
    add_model_flags(s)
    s.set_defaults(func=cmd_serve, n_ctx=2048)

    b = sub.add_parser("bench", help="plain vs naive two-context vs la_edge aligned decoding, one run")
    b.add_argument("--model", "-m", default=None)
    b.add_argument("--quick", action="store_true", help="a short run (under two minutes here)")
    b.add_argument("--json", action="store_true")
    b.add_argument("--sampler", action="store_true", help="per-token sampler time, native vs NumPy")
    b.add_argument("--repetitions", type=int, default=None)
    b.add_argument("--tokens", type=int, default=None)
    b.add_argument("--ratio", type=float, default=2.0)
    b.add_argument("--threads", type=int, default=None)
    b.add_argument("--kv-unified", action="store_true", help="one KV buffer for both sequences (faster here, not exact)")
    b.add_argument("--flash-attn", action="store_true", help="flash attention in every method")
    b.add_argument("--numpy-sampler", action="store_true", help="the NumPy reference sampler instead of C")
    b.add_argument("--scaling", action="store_true", help="raw llama_decode time for 1..16 tokens per step")
    b.add_argument("--plot", default=None, help="write a PNG chart here (needs matplotlib)")
    b.set_defaults(func=cmd_bench)

    from .evaluation.cli import add_eval_parser

    add_eval_parser(sub)
    _add_export(sub)

    d = sub.add_parser("doctor", help="report the build, backends, CPU features and sampler path")
    d.add_argument("--model", "-m", default=None)
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_doctor)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except LaEdgeError as exc:
        print(f"la-edge: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
