"""The backend protocol: what the engine needs from a model runtime (llama.cpp, ONNX).

`BackendOptions` is the one validated set of load options; `VocabMixin` gives every backend the
same tokenizer pass-throughs over its `vocab` object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Protocol, Sequence, Tuple

from ..errors import InvalidParameterError


@dataclass(frozen=True)
class BatchEntry:
    """One token of a batch: its id, position, the sequences it belongs to, and whether to output logits."""

    token: int
    pos: int
    seq_ids: Tuple[int, ...]
    logits: bool = False


@dataclass(frozen=True)
class KvShape:
    """What one KV cell (one token of one sequence) is made of, read from the model without a context.

    n_layer_swa of the n_layer layers keep only a sliding window of n_swa tokens (0: no window).
    """

    n_layer: int
    n_head_kv: int
    head_k: int
    head_v: int
    n_swa: int = 0
    n_layer_swa: int = 0


@dataclass(frozen=True)
class KvType:
    """A K/V cache element type: llama.cpp's ggml_type id and its block of `block` values in `block_bytes`."""

    ggml_type: int
    block_bytes: int
    block: int


# The llama.cpp K/V cache types offered (--kv-type); the one table of them.
KV_TYPES = {"f16": KvType(1, 2, 1), "q8_0": KvType(8, 34, 32), "q4_0": KvType(2, 18, 32)}
KV_CACHE_TYPES = tuple(KV_TYPES)


@dataclass(frozen=True)
class BackendOptions:
    """How to open a model; validated once here for every backend.

    n_ctx is the context of each sequence; n_seq_max the number of KV sequences (max_requests x max_branches).
    """

    n_ctx: int = 4096
    n_batch: int = 512
    n_seq_max: int = 2
    n_threads: Optional[int] = None
    n_gpu_layers: int = 0
    flash_attn: bool = False
    kv_unified: bool = False
    verbose: bool = False
    kv_type: str = "f16"  # K and V cache type; a quantized V needs flash attention (turned on for it)
    providers: Optional[Tuple[str, ...]] = None  # ONNX Runtime execution providers

    def __post_init__(self):
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise InvalidParameterError(msg)

        for name in ("n_ctx", "n_batch", "n_seq_max", "n_gpu_layers"):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool), f"{name} must be an integer, got {v!r}")
        need(self.n_ctx >= 16, f"n_ctx must be >= 16, got {self.n_ctx}")
        need(1 <= self.n_batch <= 65536, f"n_batch must be in [1, 65536], got {self.n_batch}")
        need(1 <= self.n_seq_max <= 256, f"n_seq_max must be in [1, 256], got {self.n_seq_max}")
        need(self.n_gpu_layers >= -1, f"n_gpu_layers must be >= -1 (-1 or 99: all), got {self.n_gpu_layers}")
        need(self.kv_type in KV_CACHE_TYPES,
             f"kv_type must be one of {', '.join(KV_CACHE_TYPES)}, got {self.kv_type!r}")
        need(self.n_threads is None or (isinstance(self.n_threads, int) and self.n_threads >= 1),
             f"n_threads must be a positive integer, got {self.n_threads!r}")

    def with_(self, **changes) -> "BackendOptions":
        from dataclasses import replace

        return replace(self, **changes)


class Backend(Protocol):
    """A model runtime that decodes batches over numbered KV-cache sequences."""

    name: str
    path: str  # the model file (or ONNX folder's model.onnx) it was opened from
    options: BackendOptions  # what it was opened with
    n_vocab: int
    n_ctx: int  # per sequence
    n_ctx_total: int  # KV cells in the whole cache
    kv_unified: bool
    n_batch: int
    n_seq_max: int
    n_threads: int
    supports_seq_copy: bool  # seq_copy gives exactly the logits of decoding the same tokens again
    n_swa: int  # sliding-window size of the KV cache (0: none); cells outside the window are forgotten
    reuse_block: int  # the prompt cache reuses whole blocks of this many tokens (exact only on their edges)
    last_forward_s: float  # seconds inside the native forward pass of the last decode() (for profiles)
    kv_shape: Optional[KvShape]  # what a KV cell holds (None: the backend grows its cache on demand)

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> List[int]:
        """Token ids; with parse_special=False control-token strings stay plain text."""

    def token_bytes(self, token: int) -> bytes: ...

    def is_eog(self, token: int) -> bool: ...

    def add_bos(self) -> bool: ...

    def chat_template(self) -> Optional[str]: ...

    def bos_eos_text(self) -> Tuple[str, str]: ...

    def decode(self, entries: Sequence[BatchEntry]) -> None:
        """Run one forward pass (its native time goes to last_forward_s); raises a DecodeError subclass on failure."""

    def logits_row(self, index: int):
        """Logits of batch entry `index` of the last decode (a zero-copy float32 pointer or array)."""

    def seq_copy(self, src: int, dst: int, p0: int, p1: int) -> None: ...

    def seq_remove(self, seq: int, p0: int = -1, p1: int = -1) -> bool:
        """Remove the sequence's cells in [p0, p1) (-1: open end); False if the cache cannot."""

    def seq_pos_max(self, seq: int) -> int: ...

    def seq_pos_min(self, seq: int) -> int:
        """The oldest position still held (-1: none); above 0 once a sliding window forgot cells."""

    def close(self) -> None: ...


class VocabMixin:
    """Tokenizer and template calls, delegated to `self.vocab` (the same for every backend)."""

    vocab = None

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> List[int]:
        return self.vocab.tokenize(text, add_special, parse_special)

    def token_bytes(self, token: int) -> bytes:
        return self.vocab.token_bytes(token)

    def is_eog(self, token: int) -> bool:
        return self.vocab.is_eog(token)

    def add_bos(self) -> bool:
        return self.vocab.add_bos()

    def chat_template(self) -> Optional[str]:
        return self.vocab.chat_template()

    def bos_eos_text(self) -> Tuple[str, str]:
        return self.vocab.bos_eos_text()
