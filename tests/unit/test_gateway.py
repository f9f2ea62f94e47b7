"""The HTTP gateway the faces share: one error map, one 5xx rule, token bytes without the vocabulary, no face
importing another. No model: a fake aligner stands in."""

import ast
import pathlib

import pytest
from fastapi.testclient import TestClient

from la_edge.errors import (BusyError, ContextOverflowError, EngineUnavailableError, InvalidParameterError,
                            RequestTimeoutError, StepFailedError)
from la_edge.faces.body import RequestError
from la_edge.faces.gateway import Gateway, failure_of
from la_edge.faces.ollama_api import error_response as ollama_error
from la_edge.faces.openai_wire import error_response as openai_error
from la_edge.faces.presets import Steering, UnknownModelError
from la_edge.faces.tokens import LOGPROB_FLOOR, TokenBytes
from la_edge.runtime.request import Chunk

FACES = pathlib.Path(__file__).resolve().parents[2] / "la_edge" / "faces"
VOCAB = {1: b"caf", 2: "é".encode(), 3: b"\xe2", 4: b"\x82\xac", 5: "\ufffd".encode()}  # 3 + 4: one character


class FakeAligner:
    alive = True

    def __init__(self):
        self.lookups = []

    def token_bytes(self, token):
        self.lookups.append(token)
        return VOCAB[token]

    def status(self):
        return {"alive": self.alive, "failure": None, "active": 0, "queued": 0, "sampler": "numpy",
                "prompt_cache": {}, "kv": {}}


def _text(token):
    return VOCAB[token].decode("utf-8", "replace")


# ---- the one error map -------------------------------------------------------------------------
@pytest.mark.parametrize("exc, status, code", [
    (RequestError("bad", status=413, code="body_too_large"), 413, "body_too_large"),
    (BusyError("full"), 429, "busy"),
    (UnknownModelError("m:x", ["m"]), 404, "model_not_found"),
    (ContextOverflowError("long"), 400, "context_length_exceeded"),
    (InvalidParameterError("bad"), 400, "invalid_value"),
    (RequestTimeoutError("late"), 504, "request_timeout"),
    (EngineUnavailableError("stopped"), 503, "engine_unavailable"),
    (StepFailedError("broke"), 500, "step_failed"),
    (RuntimeError("secret"), 500, None),
])
def test_every_error_maps_to_one_status(exc, status, code):
    f = failure_of(exc, retry_after_s=7)
    assert (f.status, f.code) == (status, code)
    assert "secret" not in f.message
    assert (f.headers or {}).get("Retry-After") == ("7" if status == 429 else None)


# ---- faces' shapes and the 5xx rule ------------------------------------------------------------
@pytest.fixture()
def client():
    gateway = Gateway(FakeAligner(), Steering("m"))
    app = gateway.app()
    gateway.face("/v1/", openai_error)
    gateway.face("/api/", ollama_error)

    @app.get("/v1/boom")
    @app.get("/api/boom")
    async def boom():
        raise RuntimeError("secret")

    with TestClient(app, raise_server_exceptions=False) as c:
        yield gateway, c


def test_an_uncaught_exception_is_a_500_in_the_face_shape_that_closes_the_connection(client):
    _, c = client
    r = c.get("/v1/boom")
    assert r.status_code == 500 and r.headers["connection"] == "close"
    assert r.json() == {"error": {"message": "internal error", "type": "server_error", "param": None, "code": None}}
    r = c.get("/api/boom")
    assert r.status_code == 500 and r.headers["connection"] == "close" and r.json() == {"error": "internal error"}


def test_errors_outside_every_face_take_the_first_face_shape(client):
    _, c = client
    assert c.get("/nowhere").json()["error"]["type"] == "not_found"
    assert c.get("/api/nowhere").json() == {"error": "Not Found"}


def test_api_key_guards_every_face_and_health_stays_open(client):
    gateway, c = client
    gateway.api_key = "k"
    assert c.get("/v1/boom").status_code == 401 and c.get("/v1/boom").json()["error"]["code"] == "invalid_api_key"
    assert c.get("/api/boom").json() == {"error": "invalid or missing API key"}
    assert c.get("/api/boom", headers={"authorization": "Bearer k"}).status_code == 500
    assert c.get("/health").status_code == 200


def test_a_dead_engine_makes_health_a_503_that_closes_the_connection(client):
    gateway, c = client
    gateway.la.alive = False
    r = c.get("/health")
    assert r.status_code == 503 and r.headers["connection"] == "close" and r.json()["status"] == "unavailable"
    with pytest.raises(EngineUnavailableError):
        gateway.check_alive()


# ---- token bytes without the vocabulary ---------------------------------------------------------
def _chunk(token, top):
    return Chunk(_text(token), token, -0.5, tuple((t, float("-inf")) for t in top),
                 top_text=tuple(_text(t) for t in top), piece=VOCAB[token])


def test_a_chunk_entry_equals_the_vocabulary_one_and_looks_up_only_split_characters():
    la = FakeAligner()
    tb = TokenBytes(la)
    c = _chunk(3, [3, 1, 4, 2, 5])
    tb.learn_chunk(c)
    assert sorted(la.lookups) == [3, 4, 5]  # only the texts that hold U+FFFD
    entry = tb.chunk_step(c).entry()
    want = {"token": _text(3), "logprob": -0.5, "bytes": list(VOCAB[3]), "top_logprobs": [
        {"token": _text(t), "logprob": LOGPROB_FLOOR, "bytes": list(VOCAB[t])} for t in (3, 1, 4, 2, 5)]}
    assert entry == want
    tb.learn_chunk(c)
    assert len(la.lookups) == 3  # learned once


def test_a_result_entry_equals_the_chunk_entry():
    la = FakeAligner()
    tb = TokenBytes(la)
    c = _chunk(4, [4, 3])

    class Result:
        logprobs = [{"token": 4, "text": _text(4), "logprob": -0.5,
                     "top": [{"token": t, "text": _text(t), "logprob": float("-inf")} for t in (4, 3)]}]

    tb.learn_result(Result)
    assert [s.entry() for s in tb.result_steps(Result)] == [tb.chunk_step(c).entry()]


# ---- no face imports another --------------------------------------------------------------------
OPENAI = {"openai_api", "openai_wire", "openai_schema"}
OLLAMA = {"ollama_api"}


def _faces_imported(name):
    tree = ast.parse((FACES / f"{name}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            yield node.module or ""
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("la_edge.faces."):
            yield node.module.split(".")[2]


@pytest.mark.parametrize("face, others", [(name, OLLAMA) for name in sorted(OPENAI)] +
                         [(name, OPENAI | {"server"}) for name in sorted(OLLAMA)])
def test_the_openai_and_ollama_faces_do_not_import_each_other(face, others):
    assert not set(_faces_imported(face)) & others


def test_the_shared_modules_import_no_face_but_the_request_models():
    for name in ("gateway", "body", "tokens"):
        assert not set(_faces_imported(name)) & (OLLAMA | {"openai_api", "openai_wire", "server"}), name
