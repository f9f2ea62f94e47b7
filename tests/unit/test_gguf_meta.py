"""GGUF metadata (backends/gguf_meta.py) on hand-crafted files: what reads, and what is corrupt. No model.

Every corrupt, truncated or foreign file is a ModelLoadError with a one-line message: never a
MemoryError, OverflowError or anything else, and nothing printed.
"""

import random
import struct

import pytest

from la_edge.backends import kv_shape
from la_edge.backends.base import KvShape
from la_edge.backends.gguf_meta import gguf_architecture, gguf_metadata, kv_shape_of
from la_edge.errors import ModelLoadError, ModelNotFoundError

U32, I32, F32, BOOL, STRING, ARRAY = 4, 5, 6, 7, 8, 9


def _str(s: bytes) -> bytes:
    return struct.pack("<Q", len(s)) + s


def _value(typ, value) -> bytes:
    if typ == STRING:
        return _str(value.encode())
    if typ == ARRAY:
        elem, items = value
        return struct.pack("<IQ", elem, len(items)) + b"".join(_value(elem, x) for x in items)
    return struct.pack({U32: "<I", I32: "<i", F32: "<f", BOOL: "<?"}[typ], value)


def gguf(kvs, tensors=(), data=b""):
    """A GGUF v3 file: key-value pairs (key, type, value), tensors (name, n_elements f32, offset)."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs))
    for key, typ, value in kvs:
        out += _str(key.encode()) + struct.pack("<I", typ) + _value(typ, value)
    for name, n, offset in tensors:
        out += _str(name.encode()) + struct.pack("<IQIQ", 1, n, 0, offset)  # 1 dim, type 0 (F32)
    if tensors:
        out += b"\0" * (-len(out) % 32)  # tensor data aligned to 32 bytes
    return out + data


LLAMA = [("general.architecture", STRING, "llama"), ("llama.block_count", U32, 30),
         ("llama.embedding_length", U32, 576), ("llama.attention.head_count", U32, 9),
         ("llama.attention.head_count_kv", U32, 3), ("llama.rope.freq_base", F32, 100000.0),
         ("tokenizer.ggml.tokens", ARRAY, (STRING, ["<s>", "</s>", "hi"])),
         ("tokenizer.ggml.scores", ARRAY, (F32, [0.0] * 5000))]


def write(tmp_path, data: bytes, name="m.gguf") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_reads_numbers_strings_and_short_arrays(tmp_path):
    meta = gguf_metadata(write(tmp_path, gguf(LLAMA)))
    assert meta["general.architecture"] == "llama" and meta["llama.block_count"] == 30
    assert meta["llama.rope.freq_base"] == 100000.0
    assert meta["tokenizer.ggml.tokens"] == ["<s>", "</s>", "hi"]
    assert meta["tokenizer.ggml.scores"] is None  # longer than ARRAY_MAX: not read
    assert gguf_architecture(write(tmp_path, gguf(LLAMA), "b.gguf")) == "llama"
    assert kv_shape(write(tmp_path, gguf(LLAMA), "c.gguf")) == KvShape(30, 3, 64, 64)  # SmolLM2-135M's


@pytest.mark.parametrize("extra, want", [
    ([], KvShape(18, 1, 256, 256, 512, 15)),  # gemma3: llama.cpp's pattern, 5 window layers then 1 full
    ([("gemma3.attention.sliding_window_pattern", U32, 3)], KvShape(18, 1, 256, 256, 512, 12)),
    ([("gemma3.attention.sliding_window_pattern", ARRAY, (BOOL, [True, False] * 9))],
     KvShape(18, 1, 256, 256, 512, 9)),
    ([("gemma3.attention.head_count_kv", ARRAY, (I32, [1, 2, 4] * 6))], KvShape(18, 4, 256, 256, 512, 15)),
])
def test_kv_shape_of_a_sliding_window_model(tmp_path, extra, want):
    kvs = [("general.architecture", STRING, "gemma3"), ("gemma3.block_count", U32, 18),
           ("gemma3.attention.head_count", U32, 4), ("gemma3.attention.head_count_kv", U32, 1),
           ("gemma3.attention.key_length", U32, 256), ("gemma3.attention.value_length", U32, 256),
           ("gemma3.attention.sliding_window", U32, 512), ("gemma3.embedding_length", U32, 640)]
    kvs = [kv for kv in kvs if kv[0] not in {e[0] for e in extra}] + extra
    assert kv_shape_of(gguf_metadata(write(tmp_path, gguf(kvs)))) == want


def _fails_in_one_line(path, *needles):
    with pytest.raises(ModelLoadError) as e:
        kv_shape(path)  # the KV budget's read before `serve` loads a model
    message = str(e.value)
    assert "\n" not in message and path in message and all(n in message for n in needles), message
    return message


@pytest.mark.parametrize("length", [2**62, 2**64 - 1, 2**40, 10**6])
def test_a_huge_string_length_is_a_load_error(tmp_path, capfd, length):
    data = bytearray(gguf(LLAMA))
    data[24:32] = struct.pack("<Q", length)  # the first key's length field
    _fails_in_one_line(write(tmp_path, bytes(data)), "corrupt", f"string length {length}")
    assert capfd.readouterr().err == ""  # ggml's log is the message, not stray lines


def test_a_huge_array_or_count_is_a_load_error(tmp_path):
    data = gguf([("tokenizer.ggml.tokens", ARRAY, (STRING, ["a", "b"]))])
    at = data.index(b"tokenizer.ggml.tokens") + len("tokenizer.ggml.tokens") + 8  # type, element type, count
    _fails_in_one_line(write(tmp_path, data[:at] + struct.pack("<Q", 2**61) + data[at + 8:]), "corrupt")
    _fails_in_one_line(write(tmp_path, data[:16] + struct.pack("<Q", 2**60) + data[24:], "n.gguf"), "corrupt")


def test_a_truncated_header_is_a_load_error(tmp_path):
    data = gguf(LLAMA)
    for cut in (4, 8, 20, 30, 60, len(data) // 2, len(data) - 1):
        _fails_in_one_line(write(tmp_path, data[:cut], f"t{cut}.gguf"))


def test_truncated_tensor_data_is_a_load_error(tmp_path):
    whole = gguf(LLAMA, tensors=[("tok_embd.weight", 1024, 0)], data=b"\0" * 4096)
    assert gguf_metadata(write(tmp_path, whole))["llama.block_count"] == 30
    _fails_in_one_line(write(tmp_path, whole[:-1000], "t.gguf"), "truncated GGUF file", "1 tensors")


def test_random_bytes_and_foreign_files_are_load_errors(tmp_path):
    rng = random.Random(0)
    noise = bytes(rng.randrange(256) for _ in range(4096))
    assert "not a GGUF file" in _fails_in_one_line(write(tmp_path, noise, "noise.gguf"))
    _fails_in_one_line(write(tmp_path, b"GGUF" + noise, "magic.gguf"), "corrupt")  # version 1.2e9
    _fails_in_one_line(write(tmp_path, b"", "empty.gguf"), "not a GGUF file")
    _fails_in_one_line(write(tmp_path, b"PK\x03\x04 a zip", "zip.gguf"), "not a GGUF file")
    (tmp_path / "dir.gguf").mkdir()  # kv_shape takes a folder for an exported ONNX model
    with pytest.raises(ModelLoadError, match="directory"):
        gguf_metadata(str(tmp_path / "dir.gguf"))
    with pytest.raises(ModelNotFoundError):
        gguf_metadata(str(tmp_path / "missing.gguf"))


def test_no_corruption_gets_past_as_another_exception(tmp_path):
    # Derandomized: 400 copies of a valid file, each with a few bytes overwritten or cut short.
    rng = random.Random(1)
    base = gguf(LLAMA, tensors=[("tok_embd.weight", 64, 0)], data=b"\0" * 256)
    path = tmp_path / "fuzz.gguf"
    for i in range(400):
        data = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(4, len(data))
            data[at:at + 8] = rng.choice([struct.pack("<Q", rng.choice([2**64 - 1, 2**63, 2**32, 0])),
                                          bytes(rng.randrange(256) for _ in range(8))])[: len(data) - at]
        if rng.random() < 0.3:
            data = data[: rng.randrange(len(data))]
        path.write_bytes(bytes(data))
        try:
            gguf_metadata(str(path))
        except ModelLoadError as e:
            assert "\n" not in str(e)


def test_non_finite_metadata_numbers_take_the_defaults():
    """A NaN or inf where a count belongs is read as absent, not a ValueError from int()."""
    from la_edge.backends.gguf_meta import kv_shape_of

    shape = kv_shape_of({"general.architecture": "llama", "llama.block_count": float("nan"),
                         "llama.attention.head_count": float("inf"), "llama.embedding_length": 64,
                         "llama.attention.head_count_kv": [float("nan"), 2]})
    assert shape.n_layer == 0 and shape.n_head_kv == 2 and shape.head_k == 64
