"""Export (ONNX, GGUF) and the ONNX backend, on a checkpoint derived from the embedded SmolLM2 GGUF.

The checkpoint is the Q4_1 GGUF dequantized by transformers, so all backends share the same weights:
transformers (fp32) is the reference, ONNX fp32 must match it to 1e-3, the f16 GGUF to 0.25.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

for _mod in ("torch", "transformers", "accelerate", "optimum.exporters.onnx", "onnxruntime", "tokenizers",
             "conversion"):
    pytest.importorskip(_mod, reason="needs the [export] extra: pip install -e '.[export]'")

from export import (  # noqa: E402
    DestinationExistsError, InsufficientSpaceError, NotACheckpointError, UnsupportedArchitectureError,
)
from export.gguf import checkpoint_from_gguf, export_gguf  # noqa: E402
from export.onnx import export_onnx  # noqa: E402
from la_edge import GenerationParams  # noqa: E402
from la_edge.backends.base import BatchEntry  # noqa: E402
from la_edge.runtime.aligner import Aligner  # noqa: E402
from la_edge.backends.llamacpp import LlamaCppBackend  # noqa: E402
from la_edge.backends.onnxrt import OnnxBackend  # noqa: E402
from tests.integration.reference import nucleus  # noqa: E402

pytestmark = pytest.mark.slow

ONNX_ATOL = 1e-3  # fp32 ONNX vs fp32 transformers (measured ~1e-4 on logits of magnitude ~40)
F16_ATOL = 0.25  # f16 GGUF in llama.cpp vs fp32 transformers (measured < 0.1)
PROMPTS = ["Why is the sky blue?", "Give me three tips for learning to cook.", "What is a prime number?",
           "How do plants make food?"]
PRINCIPLE = "Answer like a pirate, in one short paragraph."
RAW = ["<|im_start|>user\nWhy is the sky blue?<|im_end|>\n<|im_start|>assistant\n", "The capital of France is",
       "def fib(n):"]


@pytest.fixture(scope="module")
def art(tmp_path_factory, model_path):
    """The derived checkpoint and its exports: ONNX fp32, GGUF f16 and q4_k_m."""
    d = tmp_path_factory.mktemp("export")
    ck = checkpoint_from_gguf(model_path, str(d / "ckpt"))
    return {
        "ckpt": ck,
        "onnx": os.path.dirname(export_onnx(ck, str(d / "onnx"))),
        "f16": export_gguf(ck, str(d / "m-f16.gguf"), "f16"),
        "q4": export_gguf(ck, str(d / "m-q4_k_m.gguf"), "q4_k_m"),
    }


@pytest.fixture(scope="module")
def hf(art):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(art["ckpt"], dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(art["ckpt"])


def hf_logits(model, ids):
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def backend_logits(backend, ids):
    backend.seq_remove(0)
    backend.decode([BatchEntry(t, i, (0,), True) for i, t in enumerate(ids)])
    rows = [backend.logits_row(i) for i in range(len(ids))]
    return np.stack([r if isinstance(r, np.ndarray) else np.ctypeslib.as_array(r, shape=(backend.n_vocab,))
                     for r in rows])


def test_onnx_logits_match_transformers(art, hf):
    model, tok = hf
    be = OnnxBackend(art["onnx"], n_ctx=512)
    for p in RAW:
        ids = tok(p)["input_ids"]
        assert be.tokenize(p, add_special=False) == ids
        ref, got = hf_logits(model, ids), backend_logits(be, ids)
        assert np.abs(got - ref).max() < ONNX_ATOL
        assert (got.argmax(1) == ref.argmax(1)).all()


def test_gguf_f16_logits_match_transformers(art, hf):
    model, tok = hf
    be = LlamaCppBackend(art["f16"], n_ctx=512, n_seq_max=1)
    try:
        for p in RAW:
            ids = tok(p)["input_ids"]
            assert be.tokenize(p, add_special=False) == ids
            ref, got = hf_logits(model, ids), backend_logits(be, ids)
            assert np.abs(got - ref).max() < F16_ATOL
            assert (got.argmax(1) == ref.argmax(1)).all()
    finally:
        be.close()


def test_onnx_tokenizer_matches_llama_cpp(art):
    on = OnnxBackend(art["onnx"], n_ctx=64)
    ll = LlamaCppBackend(art["f16"], n_ctx=64, n_seq_max=1)
    try:
        assert on.chat_template() == ll.chat_template()
        assert on.bos_eos_text() == ll.bos_eos_text() and on.add_bos() == ll.add_bos()
        assert all(on.token_bytes(t) == ll.token_bytes(t) for t in range(on.n_vocab))
        assert all(on.is_eog(t) == ll.is_eog(t) for t in range(on.n_vocab))
        text = "Ünïcödé  spaces\tand\n<|im_start|>special<|im_end|> 12345 🙂"
        assert on.tokenize(text, False) == ll.tokenize(text, False)
    finally:
        ll.close()


class RowSpy:
    """Wraps the engine's chooser and keeps copies of the logits rows it is given."""

    def __init__(self, chooser, n_vocab):
        self.inner, self.n_vocab, self.rows, self.path = chooser, n_vocab, [], chooser.path

    def _arr(self, row):
        return row.copy() if isinstance(row, np.ndarray) else np.ctypeslib.as_array(row, shape=(self.n_vocab,)).copy()

    def choose(self, rows, combo, params, rng, history):
        self.rows.append(tuple(self._arr(r) for r in rows))
        return self.inner.choose(rows, combo, params, rng, history)


def spied_generate(la, prompt, params):
    spy = RowSpy(la.engine.chooser, la.backend.n_vocab)
    la.engine.chooser = spy
    try:
        return la.generate(prompt, principle=PRINCIPLE, params=params), spy.rows
    finally:
        la.engine.chooser = spy.inner


def test_onnx_batched_aligned_greedy_equals_separate_transformers_runs(art, hf):
    """One batched run per step (two padded rows) gives the tokens of two separate full recomputations."""
    model, _ = hf
    params = GenerationParams(temperature=0.0, ratio=1.0, max_tokens=10)
    with Aligner.load(art["onnx"], backend="onnx", n_ctx=1024) as la:
        pair = la.prompts(PROMPTS[0], PRINCIPLE)
        res = la.generate(params=params, pair=pair)
        tp, t0 = la.engine.tokenize_prompt(pair.principled), la.engine.tokenize_prompt(pair.plain)
        assert la.engine.leaked_sequences() == []
    ref = []
    for _ in range(len(res.tokens)):
        zp, z0 = hf_logits(model, tp + ref)[-1], hf_logits(model, t0 + ref)[-1]
        keep = nucleus(zp, 0.8, 1.0)
        ref.append(int(keep[np.argmax((zp + params.ratio * (zp - z0))[keep])]))
    assert res.tokens == ref


def test_onnx_concurrent_requests_equal_single_requests(art):
    """A request joining mid-decode (rows regathered, padded prefill) changes neither request's tokens."""
    params = GenerationParams(temperature=0.0, ratio=1.0, max_tokens=12, ignore_eos=True)
    with Aligner.load(art["onnx"], backend="onnx", n_ctx=2048, max_requests=2) as la:
        pairs = [la.prompts(PROMPTS[1], PRINCIPLE), la.prompts(PROMPTS[3])]
        alone = [la.generate(params=params, pair=p).tokens for p in pairs]
        h1 = la.engine.submit(pairs[0], params)
        it1 = iter(h1)
        first = [next(it1).token for _ in range(3)]
        h2 = la.engine.submit(pairs[1], params)
        together = [first + [e.token for e in it1], [e.token for e in h2]]
        assert la.engine.leaked_sequences() == []
    assert together == alone


def test_onnx_prompt_cache_gives_the_tokens_of_cold_runs(art):
    """The ONNX backend supports the prompt cache: a 3-turn conversation, warm and cold, same tokens."""
    params = GenerationParams(temperature=0.0, ratio=2.0, max_tokens=12)
    runs = []
    for cache in (True, False):
        with Aligner.load(art["onnx"], backend="onnx", n_ctx=1024, prompt_cache=cache) as la:
            msgs, out = [], []
            for text in PROMPTS[:3]:
                msgs.append({"role": "user", "content": text})
                r = la.generate(messages=msgs, principle=PRINCIPLE, params=params)
                out.append((r.tokens, r.usage["cached_tokens"] > 0, r.usage["plain_cached_tokens"] > 0))
                msgs.append({"role": "assistant", "content": r.text})
            assert la.engine.leaked_sequences() == []
        runs.append(out)
    warm, cold = runs
    assert [t for t, _, _ in warm] == [t for t, _, _ in cold]
    assert [c for _, *c in warm] == [[False, False], [True, True], [True, True]]
    assert not any(a or b for _, a, b in cold)


def test_aligned_greedy_onnx_vs_llama_cpp_f16(art):
    """Same tokens, or a first divergence only where the fp32 aligned top-2 margin is within f16 error."""
    params = GenerationParams(temperature=0.0, ratio=1.0, max_tokens=32)
    report = []
    with Aligner.load(art["onnx"], backend="onnx", n_ctx=1024) as on, Aligner.load(art["f16"], n_ctx=1024) as ll:
        for p in PROMPTS:
            (a, rows), b = spied_generate(on, p, params), ll.generate(p, principle=PRINCIPLE, params=params)
            k = next((i for i, (x, y) in enumerate(zip(a.tokens, b.tokens)) if x != y), None)
            if k is None:
                assert a.tokens == b.tokens
                report.append((p, "same", len(a.tokens)))
                continue
            zp, z0 = rows[k]
            z = zp + params.ratio * (zp - z0)
            margin = float(z[a.tokens[k]] - z[b.tokens[k]])
            report.append((p, f"diverge at {k}", round(margin, 4)))
            assert 0 <= margin < (1 + 2 * params.ratio) * 2 * F16_ATOL, report
    print(json.dumps(report))
    assert sum(r[1] == "same" for r in report) >= len(PROMPTS) // 2, report


def test_q4_k_m_loads_and_generates(art):
    with Aligner.load(art["q4"], n_ctx=512) as la:
        res = la.generate(PROMPTS[2], principle=PRINCIPLE, params=GenerationParams(temperature=0.0, max_tokens=16))
    assert len(res.tokens) >= 1 and res.text.strip()


def _write_checkpoint(folder, config, shape=(4, 4)):
    """A structurally valid checkpoint: config.json and a safetensors file (header describes `shape`)."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    header = json.dumps({"w": {"dtype": "F32", "shape": list(shape), "data_offsets": [0, 64]}}).encode()
    with open(os.path.join(folder, "model.safetensors"), "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header + bytes(64))
    return str(folder)


def test_export_errors(art, tmp_path):
    llama_cfg = json.load(open(os.path.join(art["ckpt"], "config.json")))
    with pytest.raises(NotACheckpointError, match="not found"):
        export_onnx(str(tmp_path / "missing"), str(tmp_path / "o"))
    with pytest.raises(NotACheckpointError, match="got a file"):
        export_gguf(art["f16"], str(tmp_path / "o.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotACheckpointError, match="no config.json"):
        export_onnx(str(tmp_path / "empty"), str(tmp_path / "o"))
    bert = _write_checkpoint(tmp_path / "bert", {"model_type": "bert", "architectures": ["BertForMaskedLM"]})
    with pytest.raises(UnsupportedArchitectureError):
        export_onnx(bert, str(tmp_path / "o"))
    foo = _write_checkpoint(tmp_path / "foo", {"model_type": "foo", "architectures": ["FooForCausalLM"]})
    with pytest.raises(UnsupportedArchitectureError):
        export_onnx(foo, str(tmp_path / "o"))
    with pytest.raises(UnsupportedArchitectureError):
        export_gguf(foo, str(tmp_path / "o.gguf"))
    huge = _write_checkpoint(tmp_path / "huge", llama_cfg, shape=(2**24, 2**24))  # 2.8e14 weights
    with pytest.raises(InsufficientSpaceError, match="GiB"):
        export_onnx(huge, str(tmp_path / "o"))
    with pytest.raises(InsufficientSpaceError):
        export_gguf(huge, str(tmp_path / "o.gguf"), "q4_k_m")
    size = os.path.getsize(art["q4"])
    with pytest.raises(DestinationExistsError, match="--force"):
        export_gguf(art["ckpt"], art["q4"], "q4_k_m")
    assert os.path.getsize(art["q4"]) == size
    assert not os.path.exists(tmp_path / "o") and not os.path.exists(tmp_path / "o.gguf")


def test_export_cli_errors(art, tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    def run(*args):
        return subprocess.run([sys.executable, "-m", "export.cli", "export", *args], cwd=root,
                              capture_output=True, text=True, timeout=300)

    r = run("gguf", str(tmp_path / "nope"), str(tmp_path / "o.gguf"))
    assert r.returncode == 2 and "error: source not found" in r.stderr
    r = run("onnx", art["ckpt"], art["onnx"])
    assert r.returncode == 2 and "destination exists" in r.stderr and "--force" in r.stderr
    r = run("gguf", art["ckpt"], str(tmp_path / "o.gguf"), "--type", "q3_k")
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_bench_and_eval_run_on_the_onnx_backend(art):
    # One set of model flags: bench and eval accept --backend onnx like generate and serve.
    cmd = [sys.executable, "-m", "la_edge"]
    r = subprocess.run(cmd + ["bench", "--quick", "--json", "--tokens", "8", "--repetitions", "1",
                              "--backend", "onnx", "--model", art["onnx"]], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["backend"] == "onnx" and out["ratios"]["aligned_vs_plain"] > 0
    r = subprocess.run(cmd + ["eval", "--json", "--quiet", "--limit", "1", "--principles", "lowercase", "--ratios", "2",
                              "--max-tokens", "8", "--backend", "onnx", "--model", art["onnx"]],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)
