"""`la-edge export onnx|gguf SRC DST`: the export subcommands (also `python -m export.cli`)."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from . import ExportError


def cmd_onnx(args: argparse.Namespace) -> int:
    from .onnx import export_onnx

    export_onnx(args.src, args.dst, dtype=args.dtype, force=args.force)
    return 0


def cmd_gguf(args: argparse.Namespace) -> int:
    from .gguf import export_gguf

    export_gguf(args.src, args.dst, qtype=args.type, force=args.force, n_threads=args.threads or 0)
    return 0


def add_export_parser(subparsers) -> argparse.ArgumentParser:
    """Add `export onnx` and `export gguf` to an argparse subparsers object; returns the `export` parser."""
    from .gguf import TYPES
    from .onnx import DTYPES

    e = subparsers.add_parser("export", help="export a Hugging Face checkpoint to ONNX or GGUF (needs [export])")
    sub = e.add_subparsers(dest="export_format", required=True)
    o = sub.add_parser("onnx", help="ONNX decoder with past key/values (optimum), for --backend onnx")
    o.add_argument("src", help="Hugging Face causal-LM checkpoint folder")
    o.add_argument("dst", help="output folder")
    o.add_argument("--dtype", choices=DTYPES, default="fp32", help="weights: fp32, fp16 or int8 (default: fp32)")
    o.add_argument("--force", action="store_true", help="overwrite an existing destination")
    o.set_defaults(func=cmd_onnx)
    g = sub.add_parser("gguf", help="GGUF through llama.cpp's converter and quantizer")
    g.add_argument("src", help="Hugging Face causal-LM checkpoint folder")
    g.add_argument("dst", help="output .gguf file")
    g.add_argument("--type", choices=TYPES, default="f16", help="f16, q8_0 or q4_k_m (default: f16)")
    g.add_argument("--threads", type=int, default=None, help="quantization threads (default: all cores)")
    g.add_argument("--force", action="store_true", help="overwrite an existing destination")
    g.set_defaults(func=cmd_gguf)
    return e


def main(argv: Optional[List[str]] = None) -> int:
    """Standalone entry point: `python -m export.cli export onnx SRC DST`."""
    parser = argparse.ArgumentParser(prog="python -m export.cli")
    add_export_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
