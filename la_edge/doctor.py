"""`la-edge doctor`: what this install can do."""

from __future__ import annotations

import platform
from typing import Optional


def report(model: Optional[str] = None) -> dict:
    """The active sampler path, the llama.cpp build's backends and CPU features, and the model found."""
    from . import native
    from .llama_backend import system_info
    from .models import default_model_path

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
    if model:
        info["model"] = model
    return info
