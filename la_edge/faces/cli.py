"""The `la-edge` command line: generate, doctor (and bench, serve where installed)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from ..errors import InvalidParameterError, LaEdgeError, MissingDependencyError, RequestTimeoutError

from .flags import (
    SERVE_REQUEST_TIMEOUT_S, add_max_requests_flag, add_model_flags, add_param_flags, add_preset_flags,
    add_principle_flags, add_ratio_flag, add_request_timeout_flag, load_aligner, params_from_args,
    presets_from_args, principles_from_args,
)

# The one mapping of errors to exit codes (first match); anything else is a crash with a traceback.
EXIT_CODES = ((RequestTimeoutError, 124), (LaEdgeError, 2))  # 124: as timeout(1)


def cmd_generate(args: argparse.Namespace) -> int:
    params = params_from_args(args)
    spec = principles_from_args(args)
    if args.raw and spec.cfg and args.plain_prompt is not None:
        raise InvalidParameterError("--raw with --plain-prompt is Linear Alignment over two raw prompts; a "
                                    "negative prompt (--negative-prompt-raw, --cfg-scale) goes without --plain-prompt")
    if args.raw and (spec.principles or spec.avoid or spec.documents):
        raise InvalidParameterError("--raw takes both prompts verbatim (PROMPT and --plain-prompt): give no "
                                    "--principle, --avoid, --negative, --document or --principles-file")
    la = load_aligner(args)
    if args.raw and spec.cfg and args.plain_prompt is None:
        request = spec.submit_raw(la, params, args.prompt)  # PROMPT against --negative-prompt-raw
    elif args.raw:
        from ..runtime.prompts import raw_pair

        request = la.submit(params=params, pair=raw_pair(args.prompt, args.plain_prompt))
    else:
        request = spec.submit(la, params, prompt=args.prompt, system=args.system)
    if args.json:
        print(json.dumps(request.result().to_dict(), ensure_ascii=False))
        return 0
    for chunk in request.stream():
        sys.stdout.write(chunk.text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import report

    info = report(args)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k}: {v}")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from .chat import run

    params = params_from_args(args)
    spec = principles_from_args(args)
    if args.preset is not None:
        spec = _chat_preset(args, spec, params.ratio)
    elif args.presets_file is not None:
        raise InvalidParameterError("--presets-file: name the preset to use with --preset NAME")
    with load_aligner(args) as la:
        return run(la, params, trim_history=args.trim_history, spec=spec, system=args.system,
                   principle_from=args.principle_from)


def _chat_preset(args: argparse.Namespace, spec, ratio: float):
    """The principles of `chat --preset NAME` (from --presets-file) or `--preset NAME=TEXT[@RATIO]`."""
    if spec.principles:
        raise InvalidParameterError("--preset holds the principles: give it without --principle, --avoid or "
                                    "--principles-file")
    presets = presets_from_args(args, ratio)
    name = args.preset.partition("=")[0].strip()
    if name not in presets:
        known = ", ".join(presets) or "none (give --presets-file FILE, or --preset NAME=TEXT)"
        raise InvalidParameterError(f"--preset {name[:80]!r}: no such preset; presets: {known}")
    return presets[name]


def cmd_models(args: argparse.Namespace) -> int:
    from ..backends.models import default_model_path, discover, quantization, store_roots

    entries = [e.to_dict() for e in discover()]
    embedded = default_model_path()
    if embedded:
        entries.insert(0, {"name": "smollm2-135m-instruct", "store": "embedded", "quantization": quantization(embedded),
                           "size": os.path.getsize(embedded), "path": embedded, "aliases": []})
    if args.json:
        print(json.dumps({"models": entries, "searched": [{"store": s, "path": p} for s, p in store_roots()]},
                         indent=2))
        return 0
    if not entries:
        print("no models found; searched: " + ", ".join(p for _, p in store_roots()))
        return 0
    for e in entries:
        print(f"{e['name']:<48} {e['store']:<12} {e['quantization'] or '?':<8} {e['size'] / 1e6:8.0f} MB  {e['path']}")
    return 0


# Top-level modules of the `server` extra (and what fastapi brings): missing, `la-edge serve` cannot run.
SERVER_MODULES = ("fastapi", "uvicorn", "starlette", "pydantic")


def _server_face():
    """faces.server, or MissingDependencyError (exit 2, one line) when the `server` extra is not installed."""
    try:
        from . import server
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in SERVER_MODULES:
            raise
        raise MissingDependencyError(f"la-edge serve needs the server extra (fastapi, uvicorn; {exc.name} is "
                                     "missing): pip install 'la-edge[server]', or run scripts/install.sh") from None
    return server


def cmd_serve(args: argparse.Namespace) -> int:
    serve = _server_face().serve  # before the model loads
    from ..backends.models import model_name, resolve_model
    from .presets import DEFAULT_RATIO, Steering

    default = principles_from_args(args)  # --principle, --ratio, --principles-file: for requests with none
    ratio = args.ratio[0] if args.ratio and len(args.ratio) == 1 else None
    presets = presets_from_args(args, ratio or DEFAULT_RATIO)  # flag errors before the model loads
    args.model = resolve_model(args.model) if args.model else None
    name = args.model_name or (args.model and model_name(args.model)) or "smollm2-135m-instruct"
    steering = Steering(name, presets, args.preset_separator, default, args.principle_from == "system",
                        ratio or DEFAULT_RATIO)
    la = load_aligner(args, max_requests=args.max_requests, max_queue=args.max_queue)
    if la.memory is not None:  # what the KV cache took, before the first request
        print(f"la-edge serve: {la.memory.describe()}", file=sys.stderr, flush=True)
    serve(la, host=args.host, port=args.port, model_name=name, api_key=args.api_key, web=not args.no_web,
          request_timeout=args.timeout, steering=steering, default_ratio=ratio, ollama=not args.no_ollama)
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
    add_principle_flags(g)
    g.add_argument("--system", default=None, help="system message (the principle is appended to it)")
    g.add_argument("--raw", action="store_true", help="no chat template: PROMPT is the principled prompt")
    g.add_argument("--plain-prompt", default=None, help="with --raw: the principle-free prompt")
    g.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")
    add_param_flags(g)
    add_model_flags(g)
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("chat", help="interactive multi-turn aligned chat (stdin lines when piped)")
    add_principle_flags(c)
    c.add_argument("--system", default=None, help="system message (/system changes it)")
    c.add_argument("--trim-history", action="store_true",
                   help="drop the oldest turns when the conversation outgrows the context")
    add_preset_flags(c, serve=False)
    add_param_flags(c)
    add_model_flags(c)
    c.set_defaults(func=cmd_chat)

    s = sub.add_parser("serve", help="OpenAI-compatible HTTP server (127.0.0.1 by default)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY'")
    add_max_requests_flag(s, 8)
    s.add_argument("--max-queue", type=int, default=32, help="waiting requests beyond which 429 is returned")
    add_request_timeout_flag(s, SERVE_REQUEST_TIMEOUT_S)
    s.add_argument("--model-name", default=None, help="id reported by /v1/models")
    s.add_argument("--no-web", action="store_true", help="do not serve the chat page at / (API only)")
    s.add_argument("--no-ollama", action="store_true", help="do not serve Ollama's API at /api/")
    add_preset_flags(s, serve=True)
    add_principle_flags(s)  # the server's default principles, for requests that bring none
    add_ratio_flag(s)
    add_model_flags(s, n_ctx=2048, kv_budget="auto")
    s.set_defaults(func=cmd_serve)

    from .bench import add_bench_parser

    add_bench_parser(sub)

    from .evaluation.cli import add_eval_parser

    add_eval_parser(sub)
    _add_export(sub)

    m = sub.add_parser("models", help="list GGUF models found in LM Studio, Ollama and Hugging Face stores")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_models)

    d = sub.add_parser("doctor", help="report the build, backends, CPU features and sampler path")
    d.add_argument("--json", action="store_true")
    add_max_requests_flag(d, 1)  # serve's value shows the sequences its context would hold
    add_model_flags(d)
    d.set_defaults(func=cmd_doctor)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except LaEdgeError as exc:
        print(f"la-edge: error: {exc}", file=sys.stderr)
        return next(code for cls, code in EXIT_CODES if isinstance(exc, cls))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
