"""`la-edge doctor`: what this install can do."""

from __future__ import annotations

import platform


def report(model=None) -> dict:
    """The active sampler path, the llama.cpp build's backends and CPU features, and the model found.

    `model` is a path or the parsed model flags of `la-edge doctor` (their --model and --backend).
    """
    from ..decoding import native
    from ..backends.llamacpp import system_info
    from ..backends.models import default_model_path

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
    path = getattr(model, "model", model)
    if path:
        from ..backends import detect_kind
        from ..backends.models import resolve_model

        info["model"] = resolve_model(path)
        info["model_backend"] = detect_kind(info["model"], getattr(model, "backend", "auto"))
        info["chat_template"], info["prompt_cache"] = _model_report(info["model"], model)
    from ..runtime.prompts import builtin_templates

    info["builtin_chat_templates"] = builtin_templates()
    if getattr(model, "n_gpu_layers", 0):
        info["n_gpu_layers"] = model.n_gpu_layers
    return info


def _model_report(path: str, args):
    """Which chat template the model would use and where the principle goes (or why none works), and
    how its prompt cache behaves."""
    from ..backends import BackendOptions, load_backend
    from ..errors import LaEdgeError
    from ..runtime.prompts import select_template

    backend = load_backend(path, getattr(args, "backend", "auto"), BackendOptions(n_ctx=64, n_seq_max=1))
    n_swa = getattr(backend, "n_swa", 0)
    n_ctx = getattr(args, "n_ctx", 4096)
    cache = {"enabled": not getattr(args, "no_prompt_cache", False),
             "reuse": (f"a common token prefix while the cache still holds the {n_swa}-token window before it "
                       "(sliding-window cache)" if n_swa else "any common token prefix"),
             "max_sequences": 2, "kv_cells_per_sequence": n_ctx,
             "memory": "none beyond the KV cache allocated at load: parked sequences use its cells"}
    try:
        t = select_template(backend, getattr(args, "chat_template", None), getattr(args, "chat_template_file", None))
        return ({"source": t.source, "principle_placement": t.placement, "supports_system": t.supports_system,
                 "default_system": t.default_system}, cache)
    except LaEdgeError as exc:
        return {"source": None, "error": str(exc)}, cache
    finally:
        backend.close()
