"""`la-edge doctor`: what this install can do."""

from __future__ import annotations

import argparse
import platform


def report(args: argparse.Namespace) -> dict:
    """The active sampler path, the llama.cpp build's backends and CPU features, the KV sequences a
    context holds, and (with --model) the model's chat template and prompt cache.

    `args` are the parsed flags of `la-edge doctor`: the model flags and --max-requests.
    """
    from ..decoding import native
    from ..backends.llamacpp import system_info
    from ..backends.models import default_model_path
    from ..runtime.prompts import builtin_templates

    info = {
        "la_edge": __import__("la_edge").__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "sampler": "native" if native.available() else "numpy",
        "native_library": native.LIB_PATH,
        "native_error": native.load_error(),
    }
    sysinfo = system_info()
    info["llama_cpp_python"] = sysinfo["llama_cpp_python"]
    info["gpu_offload"] = sysinfo["gpu_offload"]
    info["llama_system_info"] = sysinfo["system_info"]
    info["backends"] = sysinfo.get("backends", [])
    info["cpu_features"] = sysinfo.get("cpu_features", [])
    info["default_model"] = default_model_path()
    info["max_requests"] = args.max_requests
    info["max_branches"] = args.max_branches
    info["n_seq_max"] = args.max_requests * args.max_branches  # the KV sequences of the context
    if args.model:
        from ..backends import detect_kind
        from ..backends.models import resolve_model

        info["model"] = resolve_model(args.model)
        info["model_backend"] = detect_kind(info["model"], args.backend)
        info["chat_template"], info["prompt_cache"], info["memory"] = _model_report(info["model"], args,
                                                                                   info["n_seq_max"])
    info["builtin_chat_templates"] = builtin_templates()
    if args.n_gpu_layers:
        info["n_gpu_layers"] = args.n_gpu_layers
    return info


def _model_report(path: str, args: argparse.Namespace, n_seq_max: int):
    """Which chat template the model would use and where the principle goes (or why none works), and
    how its prompt cache behaves."""
    from ..backends import BackendOptions, load_backend
    from ..errors import LaEdgeError
    from ..runtime.prompts import select_template

    backend = load_backend(path, args.backend, BackendOptions(n_ctx=64, n_seq_max=1))
    try:
        memory = _memory_report(backend.kv_shape, args)
        n_swa = backend.n_swa
        cache = {"enabled": not args.no_prompt_cache,
                 "reuse": (f"a common token prefix while the cache still holds the {n_swa}-token window before "
                           "it (sliding-window cache)" if n_swa else "any common token prefix"),
                 "reuse_block": backend.reuse_block, "max_sequences": n_seq_max,
                 "kv_cells_per_sequence": args.n_ctx,
                 "memory": "none beyond the KV cache allocated at load: parked sequences use its cells"}
        try:
            t = select_template(backend, args.chat_template, args.chat_template_file)
        except LaEdgeError as exc:
            return {"source": None, "error": str(exc)}, cache, memory
        return ({"source": t.source, "principle_placement": t.placement, "supports_system": t.supports_system,
                 "default_system": t.default_system}, cache, memory)
    finally:
        backend.close()


def _memory_report(shape, args: argparse.Namespace) -> dict:
    """KV bytes per cell, what this command's flags and serve's defaults allocate, and what
    `--kv-budget auto` would choose for serve here (memory is sized before it is spent)."""
    from dataclasses import asdict

    from ..errors import MemoryBudgetError
    from ..runtime import memory as m
    from .flags import MAX_BRANCHES

    if shape is None:
        return {"kv_cache": "grows with the tokens (ONNX): nothing is allocated at load"}
    kv_type = args.kv_type
    serve = (8, MAX_BRANCHES, 2048)  # `la-edge serve` defaults: requests, branches, n_ctx
    available = m.env_available()
    budget = m.resolve_budget(m.AUTO)
    try:
        auto = m.plan(budget, shape, kv_type, *serve).as_dict()
    except MemoryBudgetError as exc:
        auto = {"error": str(exc)}
    return {
        "kv_type": kv_type,
        "kv_bytes_per_cell": m.cell_bytes(shape, kv_type),
        "kv_bytes_per_cell_by_type": {t: m.cell_bytes(shape, t) for t in m.KV_TYPES},
        "model": asdict(shape),
        "allocated": m.plan(None, shape, kv_type, args.max_requests, args.max_branches, args.n_ctx).as_dict(),
        "serve_defaults": m.plan(None, shape, kv_type, *serve).as_dict(),
        "memory_available_bytes": available,
        "auto_share": m.AUTO_SHARE,
        "auto_budget_bytes": budget,
        "auto": auto,
    }
