"""Checkpoint -> ONNX decoder with past key/values through optimum's exporter; optional fp16 / int8.

The destination folder holds model.onnx (+ model.onnx_data when large), the tokenizer
(tokenizer.json, tokenizer_config.json with its chat_template), config.json and la_edge.json.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from . import (
    ExportError, UnsupportedArchitectureError, check_destination, check_space, log, parameter_count, progress,
    read_checkpoint, replace_destination, require,
)

DTYPES = ("fp32", "fp16", "int8")
MODEL_FILE = "model.onnx"
TASK = "text-generation-with-past"
_EXTRA_BYTES = {"fp32": 0, "fp16": 2, "int8": 1}  # per weight, on top of the fp32 export
_EXTERNAL_DATA_LIMIT = 1_800_000_000  # protobuf's 2 GiB cap, with margin


def check_architecture(config: dict) -> str:
    """The optimum model type of a causal LM it can export with past key/values, else raise."""
    archs = config.get("architectures") or []
    if archs and not any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in archs):
        raise UnsupportedArchitectureError(f"{archs} is not a causal language model (need *ForCausalLM)")
    require("optimum.exporters.onnx.model_configs")  # registers the ONNX configs with the TasksManager
    manager = require("optimum.exporters.tasks").TasksManager
    model_type = config["model_type"]
    for name in (model_type, model_type.replace("_", "-")):
        try:
            tasks = manager.get_supported_tasks_for_model_type(name, exporter="onnx", library_name="transformers")
            break
        except KeyError:
            continue
    else:
        raise UnsupportedArchitectureError(f"optimum cannot export model_type '{model_type}' to ONNX")
    if TASK not in tasks:
        raise UnsupportedArchitectureError(f"optimum has no '{TASK}' ONNX export for '{model_type}'")
    return model_type


def export_onnx(src: str, dst: str, dtype: str = "fp32", force: bool = False) -> str:
    """Export checkpoint folder `src` to ONNX folder `dst`; returns the path of model.onnx."""
    if dtype not in DTYPES:
        raise ExportError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    config = read_checkpoint(src)
    model_type = check_architecture(config)
    check_destination(dst, force)
    n = parameter_count(src)
    check_space(dst, int(n * (4 + _EXTRA_BYTES[dtype]) * 1.1) + (64 << 20))
    tmp = f"{os.path.abspath(dst)}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        main_export = require("optimum.exporters.onnx").main_export
        with progress(f"exporting {model_type} ({n / 1e6:.0f} M weights) to ONNX with optimum",
                      os.path.join(tmp, MODEL_FILE)):
            main_export(src, output=tmp, task=TASK, device="cpu", do_validation=False)
        model = os.path.join(tmp, MODEL_FILE)
        if dtype == "fp16":
            _to_fp16(model)
        elif dtype == "int8":
            _to_int8(model)
        _write_tokenizer(src, tmp)
        with open(os.path.join(tmp, "la_edge.json"), "w", encoding="utf-8") as f:
            json.dump({"format": "onnx", "dtype": dtype, "model_type": model_type,
                       "source": os.path.abspath(src), "task": TASK}, f, indent=1)
        replace_destination(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"wrote {dst}")
    return os.path.join(dst, MODEL_FILE)


def _save(model, path: str) -> None:
    """Save an onnx ModelProto, with external data beside it when it is too large for one file."""
    onnx = require("onnx")
    data = Path(path).name + "_data"
    for p in (path, os.path.join(os.path.dirname(path), data)):
        if os.path.exists(p):
            os.remove(p)
    big = model.ByteSize() > _EXTERNAL_DATA_LIMIT
    onnx.save_model(model, path, save_as_external_data=big, all_tensors_to_one_file=True, location=data)


def _to_fp16(path: str) -> None:
    onnx = require("onnx")
    float16 = require("onnxruntime.transformers.float16")
    with progress("converting weights to fp16 (inputs and outputs stay fp32)", path):
        model = onnx.load(path)
        model = float16.convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True)
        _save(model, path)


def _to_int8(path: str) -> None:
    q = require("onnxruntime.quantization")
    out = path + ".int8"
    big = os.path.getsize(path) > _EXTERNAL_DATA_LIMIT or os.path.exists(path + "_data")
    with progress("quantizing MatMul weights to int8 (dynamic, per channel)", out):
        q.quantize_dynamic(path, out, weight_type=q.QuantType.QInt8, op_types_to_quantize=["MatMul"],
                           per_channel=True, reduce_range=True, use_external_data_format=big)
    for p in (path, path + "_data"):
        if os.path.exists(p):
            os.remove(p)
    os.replace(out, path)
    if os.path.exists(out + "_data"):
        os.replace(out + "_data", path + "_data")


def _write_tokenizer(src: str, out: str) -> None:
    """tokenizer.json and tokenizer_config.json (with chat_template inlined) from the checkpoint."""
    transformers = require("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(src)
    tok.save_pretrained(out)
    if not os.path.isfile(os.path.join(out, "tokenizer.json")):
        raise ExportError("the checkpoint's tokenizer has no fast form (tokenizer.json); the ONNX runtime needs one")
    cfg_path = os.path.join(out, "tokenizer_config.json")
    with open(cfg_path, encoding="utf-8") as f:
        cfg = json.load(f)
    template = tok.chat_template
    if template and not cfg.get("chat_template"):
        cfg["chat_template"] = template
        with open(cfg_path, "w", encoding="utf-8") as f:
            json.dump(cfg, f, indent=2, ensure_ascii=False)
