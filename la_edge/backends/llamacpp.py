"""llama.cpp backend through llama-cpp-python's low-level ctypes API.

Thin owners over the C handles (model, context, batch) that free them in order. GGUF metadata (read
before a load: the KV shape, the architecture) lives in gguf_meta.py, llama.cpp's built-in chat
templates in llamacpp_templates.py; both are re-exported here.
"""

from __future__ import annotations

import ctypes
import os
import time
from typing import List, Optional, Sequence, Tuple

import llama_cpp
from llama_cpp import _logger as _llama_logger

from .base import KV_TYPES, BackendOptions, BatchEntry, VocabMixin
from .gguf_meta import check_gguf, gguf_architecture, gguf_metadata, kv_shape_of, read_kv_shape
from .llamacpp_templates import apply_builtin_template, builtin_chat_templates
from ..errors import InvalidParameterError, ModelLoadError, check_unicode, decode_error

__all__ = ["LlamaBatch", "LlamaCppBackend", "LlamaModel", "apply_builtin_template", "builtin_chat_templates",
           "check_gguf", "gguf_architecture", "gguf_metadata", "read_kv_shape", "system_info"]

_backend_ready = False


def _init_backend(verbose: bool) -> None:
    global _backend_ready
    _llama_logger.set_verbose(verbose)
    if not _backend_ready:
        llama_cpp.llama_backend_init()
        _backend_ready = True


# ggml type ids of the offered KV cache types (ggml.h)


class LlamaModel:
    """Owns a llama_model and its vocabulary."""

    def __init__(self, path: str, n_gpu_layers: int = 0, verbose: bool = False):
        _init_backend(verbose)
        # The header first: a corrupt or truncated file is a one-line ModelLoadError saying why, and
        # what llama.cpp then fails to load is a file that reads (an architecture it cannot run).
        self.metadata = gguf_metadata(path)
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = n_gpu_layers
        self._model = llama_cpp.llama_model_load_from_file(path.encode(), mparams)
        if not self._model:
            arch = self.metadata.get("general.architecture")
            what = f"architecture {arch!r}" if isinstance(arch, str) else "no general.architecture"
            raise ModelLoadError(f"llama.cpp could not load the model ({what}): this llama.cpp build "
                                 f"(llama-cpp-python {llama_cpp.__version__}) does not run it, or its tensors are "
                                 f"corrupt; --verbose shows llama.cpp's log: {path}")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self._piece_cache: dict = {}

    @property
    def handle(self):
        return self._model

    def close(self) -> None:
        if getattr(self, "_model", None):
            llama_cpp.llama_model_free(self._model)
            self._model = None

    def __del__(self):
        self.close()

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> List[int]:
        """Token ids; parse_special=False keeps control-token strings ("<|im_end|>") as plain text."""
        data = check_unicode(text)
        cap = len(data) + 8
        buf = (llama_cpp.llama_token * cap)()
        n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            buf = (llama_cpp.llama_token * cap)()
            n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, cap, add_special, parse_special)
        return list(buf[:n])

    def token_bytes(self, token: int, special: bool = False) -> bytes:
        key = (token, special)
        piece = self._piece_cache.get(key)
        if piece is None:
            buf = ctypes.create_string_buffer(64)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
            piece = buf.raw[:n]
            self._piece_cache[key] = piece
        return piece

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def add_bos(self) -> bool:
        return bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))

    def chat_template(self) -> Optional[str]:
        t = llama_cpp.llama_model_chat_template(self._model, None)
        return t.decode("utf-8") if t else None

    def bos_eos_text(self) -> Tuple[str, str]:
        def text(tok: int) -> str:
            return self.token_bytes(tok, special=True).decode("utf-8", "replace") if tok >= 0 else ""

        return text(llama_cpp.llama_vocab_bos(self._vocab)), text(llama_cpp.llama_vocab_eos(self._vocab))


class LlamaBatch:
    """Owns a llama_batch sized for n_tokens entries of up to n_seq sequence ids each."""

    def __init__(self, n_tokens: int, n_seq: int):
        self.capacity = n_tokens
        self.n_seq = n_seq
        self._batch = llama_cpp.llama_batch_init(n_tokens, 0, n_seq)

    def fill(self, entries: Sequence[BatchEntry]) -> None:
        b = self._batch
        if len(entries) > self.capacity:
            raise InvalidParameterError(f"batch of {len(entries)} tokens exceeds n_batch={self.capacity}")
        for i, e in enumerate(entries):
            b.token[i] = e.token
            b.pos[i] = e.pos
            b.n_seq_id[i] = len(e.seq_ids)
            row = b.seq_id[i]
            for j, s in enumerate(e.seq_ids):
                row[j] = s
            b.logits[i] = 1 if e.logits else 0
        b.n_tokens = len(entries)

    @property
    def struct(self):
        return self._batch

    def close(self) -> None:
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None

    def __del__(self):
        self.close()


class LlamaCppBackend(VocabMixin):
    """One llama.cpp context whose KV cache holds n_seq_max sequences (split streams by default)."""

    name = "llama.cpp"
    # llama.cpp's k-quant CPU kernels round a token by its place in 16-row tiles of a decode call:
    # only prompt splits on multiples of 16 match a cold prefill (README, "Prompt cache").
    reuse_block = 16

    def __init__(self, model_path: str, n_ctx: int = 4096, n_batch: int = 512, n_seq_max: int = 2,
                 n_threads: Optional[int] = None, n_gpu_layers: int = 0, flash_attn: bool = False,
                 kv_unified: bool = False, verbose: bool = False, kv_type: str = "f16"):
        opts = BackendOptions(n_ctx=n_ctx, n_batch=n_batch, n_seq_max=n_seq_max, n_threads=n_threads,
                              n_gpu_layers=n_gpu_layers, flash_attn=flash_attn, kv_unified=kv_unified,
                              verbose=verbose, kv_type=kv_type)
        self.options = opts
        self.path = model_path
        self.model = self.vocab = LlamaModel(model_path, n_gpu_layers=opts.n_gpu_layers, verbose=opts.verbose)
        cparams = llama_cpp.llama_context_default_params()
        # n_ctx is per sequence. A split cache gives every sequence its own KV stream, so its
        # logits are bit-identical to a private context; a unified one shares cells (see README).
        cparams.n_ctx = n_ctx if kv_unified else n_ctx * n_seq_max
        cparams.n_batch = n_batch
        cparams.n_ubatch = n_batch
        cparams.n_seq_max = n_seq_max
        threads = n_threads or max(1, os.cpu_count() or 1)
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.kv_unified = kv_unified
        cparams.type_k = cparams.type_v = KV_TYPES[kv_type].ggml_type
        cparams.swa_full = True  # window layers hold n_ctx cells too (llama.cpp's default; runtime/memory.py)
        flash_attn = flash_attn or kv_type != "f16"  # llama.cpp quantizes V only with flash attention
        cparams.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        cparams.no_perf = True
        self.kv_shape = kv_shape_of(self.model.metadata)
        self.kv_type, self.flash_attn = kv_type, flash_attn
        self._ctx = llama_cpp.llama_init_from_model(self.model.handle, cparams)
        if not self._ctx:
            self.model.close()
            if kv_type != "f16":
                raise ModelLoadError(
                    f"llama.cpp could not create a {kv_type} KV cache with flash attention (a quantized V cache "
                    f"needs it; head sizes {self.kv_shape.head_k}/{self.kv_shape.head_v} must be multiples of 32 "
                    "and the build must support it); use --kv-type f16")
            raise ModelLoadError(
                f"llama.cpp could not create a context (n_ctx={n_ctx} x {n_seq_max} sequences); try a smaller n_ctx")
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self.n_ctx = llama_cpp.llama_n_ctx_seq(self._ctx)
        self.n_ctx_total = llama_cpp.llama_n_ctx(self._ctx)
        self.kv_unified = kv_unified
        self.n_batch = llama_cpp.llama_n_batch(self._ctx)
        self.n_seq_max = llama_cpp.llama_n_seq_max(self._ctx)
        self.n_vocab = self.model.n_vocab
        self.n_threads = threads
        # Measured: with a sliding-window (iSWA) cache, llama_memory_seq_cp leaves the copy's logits
        # off by up to 0.72 (Gemma-3, split streams), so such models prefill each sequence in full.
        self.n_swa = llama_cpp.llama_model_n_swa(self.model.handle)
        self.supports_seq_copy = self.n_swa == 0
        self._batch = LlamaBatch(self.n_batch, self.n_seq_max)

    @classmethod
    def from_options(cls, model_path: str, options: BackendOptions) -> "LlamaCppBackend":
        return cls(model_path, n_ctx=options.n_ctx, n_batch=options.n_batch, n_seq_max=options.n_seq_max,
                   n_threads=options.n_threads, n_gpu_layers=options.n_gpu_layers, flash_attn=options.flash_attn,
                   kv_unified=options.kv_unified, verbose=options.verbose, kv_type=options.kv_type)

    last_forward_s = 0.0

    def decode(self, entries: Sequence[BatchEntry]) -> None:
        self._batch.fill(entries)
        t0 = time.perf_counter()
        rc = llama_cpp.llama_decode(self._ctx, self._batch.struct)
        self.last_forward_s = time.perf_counter() - t0
        if rc != 0:
            raise decode_error(rc)

    def logits_row(self, index: int):
        ptr = llama_cpp.llama_get_logits_ith(self._ctx, index)
        if not ptr:
            raise InvalidParameterError(f"no logits for batch entry {index}")
        return ptr

    def seq_copy(self, src: int, dst: int, p0: int, p1: int) -> None:
        llama_cpp.llama_memory_seq_cp(self._mem, src, dst, p0, p1)

    def seq_remove(self, seq: int, p0: int = -1, p1: int = -1) -> bool:
        """False when this cache cannot remove part of a sequence (recurrent models)."""
        return bool(llama_cpp.llama_memory_seq_rm(self._mem, seq, p0, p1))

    def seq_pos_max(self, seq: int) -> int:
        return llama_cpp.llama_memory_seq_pos_max(self._mem, seq)

    def seq_pos_min(self, seq: int) -> int:
        """The oldest position the cache still holds for the sequence (-1: none); a sliding window forgets."""
        return llama_cpp.llama_memory_seq_pos_min(self._mem, seq)

    def close(self) -> None:
        if getattr(self, "_batch", None) is not None:
            self._batch.close()
            self._batch = None
        if getattr(self, "_ctx", None):
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "model", None) is not None:
            self.model.close()

    def __del__(self):
        self.close()


def system_info() -> dict:
    """The llama.cpp build: GPU offload support and the CPU features it was compiled for."""
    _init_backend(False)
    info = llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip()
    features, backends = [], []
    for part in info.split("|"):
        if "=" in part:  # "AVX2 = 1" style entries, prefixed by the backend ("CPU : SSE3 = 1")
            head, _, value = part.rpartition("=")
            name = head.split(":")[-1].strip()
            if ":" in head:
                backends.append(head.split(":")[0].strip())
            if value.strip() == "1":
                features.append(name)
    return {
        "llama_cpp_python": llama_cpp.__version__,
        "gpu_offload": bool(llama_cpp.llama_supports_gpu_offload()),
        "backends": backends or ["CPU"],
        "cpu_features": features,
        "system_info": info,
    }
