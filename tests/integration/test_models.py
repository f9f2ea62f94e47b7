"""Model discovery: LM Studio, Ollama and Hugging Face store layouts built around the real GGUF."""

import hashlib
import json
import os
import subprocess
import sys

import pytest

from la_edge import Aligner, GenerationParams, ModelNotFoundError
from la_edge.backends.models import discover, find_model, quantization, resolve_model


def _ollama(root, name, tag, blob_src, extra_layers=(), file_type="Q4_1"):
    blobs = root / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    digest = "sha256:" + hashlib.sha256(str(blob_src).encode() + name.encode()).hexdigest()
    os.symlink(blob_src, blobs / digest.replace(":", "-"))
    config = blobs / ("sha256-" + "c" * 63 + name[0])
    config.write_text(json.dumps({"model_format": "gguf", "file_type": file_type}))
    layers = [{"mediaType": "application/vnd.ollama.image.model", "digest": digest, "size": 1}, *extra_layers]
    mdir = root / "manifests" / "registry.ollama.ai" / "library" / name
    mdir.mkdir(parents=True, exist_ok=True)
    (mdir / tag).write_text(json.dumps({"schemaVersion": 2, "layers": layers,
                                        "config": {"digest": "sha256-" + "c" * 63 + name[0]}}))


@pytest.fixture
def stores(tmp_path, monkeypatch, model_path):
    """A temporary HOME with the three stores holding (links to) the embedded model."""
    home = tmp_path / "home"
    lm = home / ".lmstudio" / "models" / "bartowski" / "SmolLM2-135M-Instruct-GGUF"
    lm.mkdir(parents=True)
    os.symlink(model_path, lm / "SmolLM2-135M-Instruct-Q4_1.gguf")
    (lm / "mmproj-SmolLM2-f16.gguf").write_bytes(b"GGUF")  # a projector: never listed
    hf = home / ".cache" / "huggingface" / "hub" / "models--HuggingFaceTB--SmolLM2-135M-GGUF" / "snapshots" / "abc"
    hf.mkdir(parents=True)
    os.symlink(model_path, hf / "smollm2-hf.Q4_1.gguf")
    oll = home / ".ollama" / "models"
    _ollama(oll, "smollm2", "135m", model_path)
    # An Ollama adapter blob that is not a GGUF: its model must not be offered.
    bad = tmp_path / "adapter.bin"
    bad.write_bytes(b"PK\x03\x04 not a gguf")
    _ollama(oll, "broken", "latest", bad)
    monkeypatch.setenv("HOME", str(home))
    for var in ("LA_EDGE_MODEL_DIRS", "OLLAMA_MODELS", "HF_HUB_CACHE", "HF_HOME", "LA_EDGE_MODEL"):
        monkeypatch.delenv(var, raising=False)
    return home


def test_discover_lists_each_store(stores, model_path):
    found = {e.store: e for e in discover()}
    assert set(found) == {"lmstudio", "ollama", "huggingface"}
    assert found["ollama"].name == "smollm2:135m" and found["ollama"].quantization == "Q4_1"
    assert found["lmstudio"].quantization == "Q4_1" and found["lmstudio"].size == os.path.getsize(model_path)
    assert all("mmproj" not in e.path and "broken" not in e.name for e in discover())


@pytest.mark.parametrize("name, store", [
    ("smollm2:135m", "ollama"), ("SMOLLM2:135M", "ollama"),
    ("SmolLM2-135M-Instruct-Q4_1", "lmstudio"), ("bartowski/smollm2-135m-instruct-gguf", "lmstudio"),
    ("smollm2-hf.Q4_1.gguf", "huggingface"), ("HuggingFaceTB/SmolLM2-135M-GGUF", "huggingface"),
])
def test_names_resolve_case_insensitively(stores, name, store):
    assert find_model(name).store == store
    assert resolve_model(name).endswith(".gguf") or "sha256-" in resolve_model(name)


def test_ambiguous_and_unknown_names_say_why(stores):
    with pytest.raises(ModelNotFoundError, match="ambiguous") as exc:
        find_model("smollm2")
    assert "ollama" in str(exc.value) and "lmstudio" in str(exc.value)
    with pytest.raises(ModelNotFoundError, match="looked in") as exc:
        resolve_model("no-such-model")
    assert ".ollama" in str(exc.value) and ".lmstudio" in str(exc.value)
    with pytest.raises(ModelNotFoundError, match="not a GGUF file"):
        resolve_model("broken")  # its blob is not a GGUF


def test_model_dirs_env_replaces_the_roots(stores, tmp_path, monkeypatch, model_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    os.symlink(model_path, mine / "tiny-chat.Q4_1.gguf")
    monkeypatch.setenv("LA_EDGE_MODEL_DIRS", f"{mine}{os.pathsep}ollama={stores / '.ollama' / 'models'}")
    assert {e.store for e in discover()} == {"dir", "ollama"}
    assert find_model("tiny-chat").path == str(mine / "tiny-chat.Q4_1.gguf")


def test_generate_from_a_store_name(stores):
    with Aligner.load("smollm2:135m", n_ctx=512) as la:
        r = la.generate("Say hi.", "Be brief.", GenerationParams(temperature=0.0, max_tokens=4))
    assert r.tokens


def test_models_command_and_cli_name(stores):
    env = dict(os.environ)
    r = subprocess.run([sys.executable, "-m", "la_edge", "models", "--json"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    stores_seen = {m["store"] for m in out["models"]}
    assert {"lmstudio", "ollama", "huggingface"} <= stores_seen
    assert all({"name", "store", "quantization", "size", "path"} <= set(m) for m in out["models"])
    r = subprocess.run([sys.executable, "-m", "la_edge", "generate", "Hi", "--model", "smollm2:135m",
                        "--temperature", "0", "--max-tokens", "3", "--json"], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "la_edge", "generate", "Hi", "--model", "smollm2"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "ambiguous" in r.stderr and "Traceback" not in r.stderr


def test_quantization_from_file_names():
    assert quantization("Llama-3.2-3B-Instruct-Q4_K_M.gguf") == "Q4_K_M"
    assert quantization("qwen2.5-0.5b-instruct-q8_0.gguf") == "Q8_0"
    assert quantization("model-f16.gguf") == "F16"
    assert quantization("phi-3-mini-4k-instruct.IQ3_XS.gguf") == "IQ3_XS"
    assert quantization("plainname.gguf") is None


def test_unknown_architecture_is_named(tmp_path):
    import gguf

    from la_edge import ModelLoadError

    path = str(tmp_path / "alien.gguf")
    w = gguf.GGUFWriter(path, "la_edge_unknown_arch")
    w.add_block_count(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelLoadError, match="la_edge_unknown_arch"):
        Aligner.load(path, n_ctx=64)
