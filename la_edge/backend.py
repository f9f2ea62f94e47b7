"""The backend protocol: what the engine needs from a model runtime (llama.cpp, ONNX)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Protocol, Sequence, Tuple


@dataclass(frozen=True)
class BatchEntry:
    """One token of a batch: its id, position, the sequences it belongs to, and whether to output logits."""

    token: int
    pos: int
    seq_ids: Tuple[int, ...]
    logits: bool = False


class Backend(Protocol):
    """A model runtime that decodes batches over numbered KV-cache sequences."""

    n_vocab: int
    n_ctx: int
    n_batch: int
    n_seq_max: int

    def tokenize(self, text: str, add_special: bool = True) -> List[int]: ...

    def token_bytes(self, token: int) -> bytes: ...

    def is_eog(self, token: int) -> bool: ...

    def chat_template(self) -> Optional[str]: ...

    def bos_eos_text(self) -> Tuple[str, str]: ...

    def decode(self, entries: Sequence[BatchEntry]) -> None:
        """Run one forward pass; raises a DecodeError subclass on failure."""

    def logits_row(self, index: int):
        """Logits of batch entry `index` of the last decode (a zero-copy float32 pointer or array)."""

    def seq_copy(self, src: int, dst: int, p0: int, p1: int) -> None: ...

    def seq_remove(self, seq: int, p0: int = -1, p1: int = -1) -> None: ...

    def seq_pos_max(self, seq: int) -> int: ...
