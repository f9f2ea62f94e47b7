"""ONNX Runtime backend: a decoder exported by `la-edge export onnx` behind the Backend protocol.

Every live sequence is one row of a single batch, so each decode (both sequences of every request)
is one session run. Rows are right-padded within a step and masked by the attention mask; position
ids are explicit. Past key/values stay in OrtValues bound with IO binding from one run to the next;
they are regathered (copied) only when the set of sequences changes (admission, seq_copy, finish).
"""

from __future__ import annotations

import json
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .base import BackendOptions, BatchEntry, VocabMixin
from ..errors import InvalidParameterError, ModelLoadError, ModelNotFoundError, check_unicode, decode_error

MODEL_FILE = "model.onnx"
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "coreml": "CoreMLExecutionProvider"}
# End-of-generation tokens that llama.cpp also recognises by their text (EOT/EOM, and FIM pad/repo/sep).
EOG_TEXTS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>", "<|end|>",
             "</s>", "<|eom_id|>", "<|return|>", "<|call|>", "<|fim_pad|>", "<fim-pad>", "<fim_pad>",
             "<|repo_name|>", "<reponame>", "<|file_sep|>")


def _byte_decoder() -> Dict[str, int]:
    """GPT-2's printable-character -> byte table (the inverse of bytes_to_unicode)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _content(tok) -> Optional[str]:
    return tok.get("content") if isinstance(tok, dict) else tok


class HFTokenizer:
    """tokenizer.json (the `tokenizers` library) plus tokenizer_config.json: ids, bytes, EOG, template."""

    def __init__(self, folder: str):
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise ModelLoadError("the ONNX backend needs `tokenizers`: pip install 'la-edge[onnx]'") from exc
        path = os.path.join(folder, "tokenizer.json")
        if not os.path.isfile(path):
            raise ModelLoadError(f"no tokenizer.json in {folder}; export the model with `la-edge export onnx`")
        self.tok = Tokenizer.from_file(path)
        self.config = _read_json(os.path.join(folder, "tokenizer_config.json"))
        with open(path, encoding="utf-8") as f:
            spec = json.load(f)
        self._byte_level = "ByteLevel" in json.dumps(spec.get("decoder")) or "ByteLevel" in json.dumps(
            spec.get("pre_tokenizer"))
        self._special = {t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
        self.bos = _content(self.config.get("bos_token")) or ""
        self.eos = _content(self.config.get("eos_token")) or ""
        self.bos_id = self.tok.token_to_id(self.bos) if self.bos else None
        self.eog = self._eog_ids(folder)
        plain = self.tok.encode("a", add_special_tokens=False).ids
        special = self.tok.encode("a", add_special_tokens=True).ids
        self.adds_bos = bool(self.bos_id is not None and len(special) > len(plain) and special[0] == self.bos_id)
        self._bytes: Dict[int, bytes] = {}
        self._decoder = _byte_decoder() if self._byte_level else None
        self.template = self.config.get("chat_template")
        if isinstance(self.template, list):  # named templates: take "default"
            named = {t.get("name"): t.get("template") for t in self.template}
            self.template = named.get("default") or next(iter(named.values()), None)
        jinja = os.path.join(folder, "chat_template.jinja")
        if not self.template and os.path.isfile(jinja):
            with open(jinja, encoding="utf-8") as f:
                self.template = f.read()

    def _eog_ids(self, folder: str) -> frozenset:
        ids = set()
        for name in ("config.json", "generation_config.json"):
            eos = _read_json(os.path.join(folder, name)).get("eos_token_id")
            ids.update(eos if isinstance(eos, list) else [eos] if isinstance(eos, int) else [])
        for text in (self.eos,) + EOG_TEXTS:
            tid = self.tok.token_to_id(text) if text else None
            if tid is not None and (text == self.eos or tid in self._special):
                ids.add(tid)
        return frozenset(ids)

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> List[int]:
        """Token ids; parse_special=False encodes control-token strings as plain text."""
        check_unicode(text)
        self.tok.encode_special_tokens = not parse_special
        try:
            return self.tok.encode(text, add_special_tokens=add_special).ids
        finally:
            self.tok.encode_special_tokens = False

    def is_eog(self, token: int) -> bool:
        return token in self.eog

    def add_bos(self) -> bool:
        return self.adds_bos

    def chat_template(self) -> Optional[str]:
        return self.template

    def bos_eos_text(self) -> Tuple[str, str]:
        return self.bos, self.eos

    def token_bytes(self, token: int) -> bytes:
        """The token's raw bytes (control tokens render empty, as llama.cpp does)."""
        piece = self._bytes.get(token)
        if piece is None:
            piece = self._piece(token)
            self._bytes[token] = piece
        return piece

    def _piece(self, token: int) -> bytes:
        text = self.tok.id_to_token(token)
        if text is None or token in self._special:
            return b""
        if self._decoder is not None and all(c in self._decoder for c in text):
            return bytes(self._decoder[c] for c in text)
        if len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            return bytes([int(text[3:5], 16)])
        return text.replace("\u2581", " ").encode("utf-8")


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return data if isinstance(data, dict) else {}


def resolve_providers(providers: Optional[Sequence[str]]) -> List[str]:
    """Execution provider names from names or shorthands (cpu, cuda, coreml); CPU is always the fallback."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = [PROVIDERS.get(p.lower(), p) for p in (providers or ["cpu"])]
    missing = [p for p in wanted if p not in available]
    if missing:
        raise ModelLoadError(f"execution provider(s) {missing} not available; this onnxruntime has {available}")
    return wanted + ([] if "CPUExecutionProvider" in wanted else ["CPUExecutionProvider"])


class OnnxBackend(VocabMixin):
    """All sequences of all requests as rows of one batched onnxruntime run per decode."""

    name = "onnx"
    reuse_block = 16  # llama.cpp's block, unmeasured here: warm = cold is tested with it (test_export)

    def __init__(self, path: str, n_ctx: int = 4096, n_batch: int = 512, n_seq_max: int = 2,
                 n_threads: Optional[int] = None, providers: Optional[Sequence[str]] = None):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ModelLoadError("the ONNX backend needs onnxruntime: pip install 'la-edge[onnx]'") from exc
        self.options = BackendOptions(n_ctx=n_ctx, n_batch=n_batch, n_seq_max=n_seq_max, n_threads=n_threads,
                                      providers=tuple(providers) if providers else None)
        folder = path if os.path.isdir(path) else os.path.dirname(path)
        model_file = path if os.path.isfile(path) else os.path.join(folder, MODEL_FILE)
        if not os.path.exists(model_file):
            raise ModelNotFoundError(f"ONNX model not found: {model_file}")
        self.vocab = HFTokenizer(folder)
        self.providers = resolve_providers(providers)
        opts = ort.SessionOptions()
        self.n_threads = n_threads or max(1, os.cpu_count() or 1)
        opts.intra_op_num_threads = self.n_threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._sess = ort.InferenceSession(model_file, opts, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelLoadError(f"onnxruntime could not load {model_file}: {exc}") from exc
        self._ort = ort
        inputs = {i.name: i for i in self._sess.get_inputs()}
        for name in ("input_ids", "attention_mask", "position_ids"):
            if name not in inputs:
                raise ModelLoadError(f"{model_file} has no '{name}' input; export it with `la-edge export onnx`")
        self._past = sorted((n for n in inputs if n.startswith("past_key_values.")), key=_layer_key)
        if not self._past:
            raise ModelLoadError(f"{model_file} has no past_key_values inputs (exported without cache?)")
        self._present = [n.replace("past_key_values.", "present.") for n in self._past]
        shape = inputs[self._past[0]].shape
        self._heads, self._head_dim = int(shape[1]), int(shape[3])
        self._kv_dtype = np.float16 if inputs[self._past[0]].type == "tensor(float16)" else np.float32
        vocab = self._sess.get_outputs()[0].shape[-1]
        if not isinstance(vocab, int):
            vocab = _read_json(os.path.join(folder, "config.json"))["vocab_size"]
        self.n_vocab = int(vocab)
        self._device = "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"
        self.n_ctx, self.n_batch, self.n_seq_max = n_ctx, n_batch, n_seq_max
        self.n_ctx_total, self.kv_unified = n_ctx * n_seq_max, False
        self.supports_seq_copy = True
        self.n_swa = 0
        self.kv_shape = None  # grows with the live tokens: no cache to size at load
        self.kv_type = "f16" if self._kv_dtype == np.float16 else "f32"
        self.path = model_file
        self._reset()

    @classmethod
    def from_options(cls, path: str, options: BackendOptions) -> "OnnxBackend":
        if options.kv_type != "f16":
            raise InvalidParameterError("--kv-type q8_0/q4_0 needs the llama.cpp backend (ONNX keeps the "
                                        "exported model's KV type)")
        return cls(path, n_ctx=options.n_ctx, n_batch=options.n_batch, n_seq_max=options.n_seq_max,
                   n_threads=options.n_threads, providers=options.providers)

    # KV state: physical rows of self._kv, and per sequence (row, positions of its columns, -1 = empty).
    def _reset(self) -> None:
        self._kv: Optional[list] = None
        self._rows: List[int] = []
        self._seqs: Dict[int, Tuple[int, np.ndarray]] = {}
        self._width = 0
        self._logits: Optional[np.ndarray] = None
        self._where: List[Tuple[int, int]] = []

    def seq_pos_max(self, seq: int) -> int:
        s = self._seqs.get(seq)
        return int(s[1].max()) if s is not None else -1

    def seq_pos_min(self, seq: int) -> int:
        s = self._seqs.get(seq)
        return int(s[1][s[1] >= 0].min()) if s is not None else -1

    def seq_remove(self, seq: int, p0: int = -1, p1: int = -1) -> bool:
        lo, hi = max(p0, 0), (p1 if p1 >= 0 else np.iinfo(np.int64).max)
        for s in list(self._seqs) if seq < 0 else [seq]:
            if s not in self._seqs:
                continue
            row, pos = self._seqs[s]
            pos = np.where((pos >= lo) & (pos < hi), -1, pos)
            if (pos >= 0).any():
                self._seqs[s] = (row, pos)
            else:
                del self._seqs[s]
        return True

    def seq_copy(self, src: int, dst: int, p0: int, p1: int) -> None:
        if src not in self._seqs or src == dst:
            return
        if dst in self._seqs:
            raise InvalidParameterError(f"onnx backend: seq_copy into non-empty sequence {dst} is not supported")
        lo, hi = max(p0, 0), (p1 if p1 >= 0 else np.iinfo(np.int64).max)
        row, pos = self._seqs[src]
        pos = np.where((pos >= lo) & (pos < hi), pos, -1)
        if (pos >= 0).any():
            self._seqs[dst] = (row, pos)

    def _regather(self, order: List[int]) -> None:
        """Rebuild the batched past for rows `order`, each row's live columns packed to the left."""
        cols = {s: np.nonzero(self._seqs[s][1] >= 0)[0] for s in order if s in self._seqs}
        width = max((len(c) for c in cols.values()), default=0)
        old = [v.numpy() for v in self._kv] if self._kv is not None and cols else None
        new = [np.zeros((len(order), self._heads, width, self._head_dim), self._kv_dtype) for _ in self._past]
        seqs = {}
        for r, s in enumerate(order):
            pos = np.full(width, -1, np.int64)
            if s in cols:
                row, src_pos = self._seqs[s]
                c = cols[s]
                pos[: len(c)] = src_pos[c]
                for a, b in zip(new, old):
                    a[r, :, : len(c)] = b[row][:, c]
            seqs[s] = (r, pos)
        self._kv = [self._ort.OrtValue.ortvalue_from_numpy(a, self._device, 0) for a in new]
        self._rows, self._seqs, self._width = list(order), seqs, width

    last_forward_s = 0.0

    def decode(self, entries: Sequence[BatchEntry]) -> None:
        if not entries:
            return
        if len(entries) > self.n_batch:
            raise InvalidParameterError(f"batch of {len(entries)} tokens exceeds n_batch={self.n_batch}")
        per: Dict[int, List[Tuple[int, BatchEntry]]] = {}
        for i, e in enumerate(entries):
            if not e.seq_ids:
                raise InvalidParameterError(f"batch entry {i} has no sequence id")
            for s in e.seq_ids:
                if not 0 <= s < self.n_seq_max:
                    raise InvalidParameterError(f"sequence id {s} out of range [0, {self.n_seq_max})")
                per.setdefault(s, []).append((i, e))
        order = list(self._seqs) + [s for s in per if s not in self._seqs]
        steps = max(len(v) for v in per.values())
        live = max((int((p >= 0).sum()) for _, p in self._seqs.values()), default=0)
        if live + steps > self.n_ctx:
            raise decode_error(1)
        stale = order != self._rows or any(s not in self._seqs or self._seqs[s][0] != r
                                           for r, s in enumerate(order))
        if stale or self._width + steps > self.n_ctx or self._width > 2 * live + 64:  # also drops padding
            self._regather(order)
        self._run(order, per, steps, len(entries))

    def _run(self, order: List[int], per, steps: int, n_entries: int) -> None:
        n = len(order)
        ids = np.zeros((n, steps), np.int64)
        new_pos = np.full((n, steps), -1, np.int64)
        where: List[Tuple[int, int]] = [(-1, -1)] * n_entries
        for r, s in enumerate(order):
            for t, (i, e) in enumerate(per.get(s, ())):
                ids[r, t], new_pos[r, t] = e.token, e.pos
                if where[i][0] < 0:
                    where[i] = (r, t)
        past_pos = np.stack([self._seqs[s][1] for s in order]) if self._width else np.zeros((n, 0), np.int64)
        mask = np.concatenate([past_pos >= 0, new_pos >= 0], axis=1).astype(np.int64)
        io = self._sess.io_binding()
        io.bind_cpu_input("input_ids", ids)
        io.bind_cpu_input("attention_mask", mask)
        io.bind_cpu_input("position_ids", np.maximum(new_pos, 0))
        past = self._kv
        if past is None or self._width == 0:
            empty = np.zeros((n, self._heads, 0, self._head_dim), self._kv_dtype)
            past = [self._ort.OrtValue.ortvalue_from_numpy(empty, self._device, 0)] * len(self._past)
        for name, v in zip(self._past, past):
            io.bind_ortvalue_input(name, v)
        io.bind_output("logits", "cpu")
        for name in self._present:
            io.bind_output(name, self._device)
        try:
            t0 = time.perf_counter()
            self._sess.run_with_iobinding(io)
            self.last_forward_s = time.perf_counter() - t0
        except Exception as exc:  # onnxruntime's own exception types
            raise decode_error(-2) from exc
        outs = io.get_outputs()
        self._logits = outs[0].numpy()
        self._kv = list(outs[1:])
        self._where = where
        self._width += steps
        self._rows = list(order)
        self._seqs = {s: (r, np.concatenate([past_pos[r], new_pos[r]])) for r, s in enumerate(order)}

    def logits_row(self, index: int):
        if self._logits is None or not 0 <= index < len(self._where):
            raise InvalidParameterError(f"no logits for batch entry {index}")
        r, t = self._where[index]
        row = self._logits[r, t]
        return row if row.dtype == np.float32 else row.astype(np.float32)

    def close(self) -> None:
        self._reset()
        self._sess = None


def _layer_key(name: str):
    parts = name.split(".")
    return int(parts[1]), parts[2]

