"""Workstation-side export of a Hugging Face causal-LM checkpoint to ONNX and GGUF.

Never imported by the la_edge runtime. Installed as `la_edge_export` in the wheel, or run from
the repository as `python -m export.cli`.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Optional

try:
    from la_edge.errors import LaEdgeError
except ImportError:  # the exporter also works without the runtime installed
    LaEdgeError = Exception  # type: ignore[misc,assignment]


class ExportError(LaEdgeError):
    """Base class of export errors."""


class NotACheckpointError(ExportError):
    """The source is not a Hugging Face checkpoint folder (config.json plus weights)."""


class UnsupportedArchitectureError(ExportError):
    """The checkpoint's architecture is not supported by the chosen exporter."""


class DestinationExistsError(ExportError, FileExistsError):
    """The destination exists and --force was not given."""


class InsufficientSpaceError(ExportError, OSError):
    """The destination's file system lacks the space the export needs."""


class MissingDependencyError(ExportError, ImportError):
    """An export dependency is not installed (pip install 'la-edge[export]')."""


WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin", "model*.bin")
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I8": 1, "U8": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def log(msg: str) -> None:
    """Progress line on stderr."""
    print(f"[la-edge export {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@contextmanager
def progress(label: str, watch: Optional[str] = None, every: float = 10.0):
    """Log a long step's start, a heartbeat (elapsed, size of `watch`) every `every` s, and its end."""
    log(f"{label} ...")
    t0 = time.perf_counter()
    done = threading.Event()

    def beat():
        while not done.wait(every):
            size = f", {os.path.getsize(watch) / 2**20:.0f} MiB written" if watch and os.path.exists(watch) else ""
            log(f"{label}: {time.perf_counter() - t0:.0f} s{size}")

    th = threading.Thread(target=beat, daemon=True)
    th.start()
    try:
        yield
    finally:
        done.set()
        th.join()
    log(f"{label}: done in {time.perf_counter() - t0:.1f} s")


def read_checkpoint(src: str) -> Dict:
    """config.json of a checkpoint folder; raises NotACheckpointError with what is missing."""
    path = Path(src)
    if not path.exists():
        raise NotACheckpointError(f"source not found: {src}")
    if not path.is_dir():
        raise NotACheckpointError(f"source must be a checkpoint folder (config.json + weights), got a file: {src}")
    cfg = path / "config.json"
    if not cfg.is_file():
        raise NotACheckpointError(f"not a Hugging Face checkpoint: no config.json in {src}")
    if not any(next(path.glob(g), None) for g in WEIGHT_GLOBS):
        raise NotACheckpointError(f"no weights (*.safetensors or pytorch_model*.bin) in {src}")
    try:
        config = json.loads(cfg.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise NotACheckpointError(f"config.json does not parse: {exc}") from exc
    if not isinstance(config, dict) or "model_type" not in config:
        raise NotACheckpointError(f"config.json has no model_type: {cfg}")
    return config


def parameter_count(src: str) -> int:
    """Number of weights, read from safetensors headers (file sizes as a fallback)."""
    total = 0
    files = sorted(Path(src).glob("*.safetensors"))
    for f in files:
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, t in header.items():
            if name != "__metadata__":
                count = 1
                for d in t["shape"]:
                    count *= d
                total += count
    if not files:  # .bin checkpoints: assume 2-byte weights
        total = sum(f.stat().st_size for g in WEIGHT_GLOBS[1:] for f in Path(src).glob(g)) // 2
    return total


def check_destination(dst: str, force: bool) -> None:
    """Refuse an existing destination unless force."""
    if os.path.lexists(dst) and not force:
        raise DestinationExistsError(f"destination exists: {dst} (use --force to overwrite)")


def replace_destination(tmp: str, dst: str) -> None:
    """Move the finished `tmp` (same file system) to `dst`, removing what was there."""
    if os.path.isdir(dst) and not os.path.islink(dst):
        shutil.rmtree(dst)
    elif os.path.lexists(dst):
        os.remove(dst)
    os.replace(tmp, dst)


def check_space(dst: str, needed: int) -> None:
    """Raise InsufficientSpaceError when the file system of dst has less than `needed` bytes free."""
    parent = os.path.dirname(os.path.abspath(dst)) or "."
    while not os.path.isdir(parent):
        parent = os.path.dirname(parent)
    free = shutil.disk_usage(parent).free
    if free < needed:
        raise InsufficientSpaceError(
            f"not enough disk space in {parent}: the export needs about {needed / 2**30:.2f} GiB, "
            f"{free / 2**30:.2f} GiB free")


def require(module: str):
    """Import an export dependency or raise MissingDependencyError with the install hint."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{module} is needed for export ({exc}); install it with: pip install 'la-edge[export]'") from exc


__all__ = [
    "ExportError", "NotACheckpointError", "UnsupportedArchitectureError", "DestinationExistsError",
    "InsufficientSpaceError", "MissingDependencyError", "read_checkpoint", "parameter_count",
]
