"""Every bad input is a typed error before any decoding, and the engine stays healthy."""

import pytest

from la_edge import (Aligner, ChatTemplateError, ContextOverflowError, GenerationParams,
                     InvalidParameterError, ModelLoadError, ModelNotFoundError)
from la_edge.runtime.prompts import ChatTemplate


@pytest.fixture(scope="module")
def la(model_path):
    with Aligner.load(model_path, n_ctx=512) as aligner:
        yield aligner


def healthy(la):
    res = la.generate("Say hi.", "Be brief.", GenerationParams(temperature=0.0, max_tokens=4))
    assert res.tokens
    assert la.engine.leaked_sequences() == []


@pytest.mark.parametrize("prompt, principle", [("", "x"), ("   ", "x"), ("hi", ""), ("hi", "  ")])
def test_empty_prompt_or_principle(la, prompt, principle):
    with pytest.raises(InvalidParameterError):
        la.generate(prompt, principle)
    healthy(la)


def test_empty_messages(la):
    with pytest.raises(InvalidParameterError):
        la.generate(messages=[])
    healthy(la)


@pytest.mark.parametrize("kwargs", [{"ratio": float("nan")}, {"ratio": 1e9}, {"temperature": -1.0},
                                    {"top_p": 0.0}, {"top_p": 2.0}])
def test_bad_params(la, kwargs):
    with pytest.raises(InvalidParameterError):
        la.generate("hi", "x", GenerationParams(**kwargs))
    healthy(la)


def test_prompt_plus_max_tokens_beyond_context(la):
    with pytest.raises(ContextOverflowError) as e:
        la.generate("hi", "Be brief.", GenerationParams(max_tokens=500))
    assert "n_ctx=512" in str(e.value)
    with pytest.raises(ContextOverflowError):
        la.generate("word " * 600, "Be brief.", GenerationParams(max_tokens=4))
    healthy(la)


def test_missing_and_non_gguf_model(tmp_path):
    with pytest.raises(ModelNotFoundError):
        Aligner.load(str(tmp_path / "nope.gguf"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(ModelLoadError) as e:
        Aligner.load(str(bad))
    assert "GGUF" in str(e.value)
    trunc = tmp_path / "trunc.gguf"
    trunc.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ModelLoadError):
        Aligner.load(str(trunc))


def test_unknown_chat_template(la):
    with pytest.raises(ChatTemplateError):
        ChatTemplate("{% if %}")
    original = la._template
    la._template = None
    real = la.backend.chat_template
    la.backend.chat_template = lambda: None  # a model without a template in its metadata
    try:
        with pytest.raises(ChatTemplateError):
            la.generate("hi", "x")
    finally:
        la.backend.chat_template = real
        la._template = original
    healthy(la)


def test_native_decode_codes_become_typed_exceptions(la):
    from la_edge import InvalidBatchError
    from la_edge.backends.base import BatchEntry

    b = la.backend
    la.engine.clear_cache()  # this test drives the context directly
    b.decode([BatchEntry(1, 0, (0,))])
    with pytest.raises(InvalidBatchError) as e:  # position gap: llama.cpp rejects the batch (-1)
        b.decode([BatchEntry(1, 5, (0,), True)])
    assert e.value.code == -1
    b.seq_remove(0)
    healthy(la)
