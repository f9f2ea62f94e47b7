"""Negative prompts (TabbyAPI's fields) and documents over HTTP and the CLI, through the official clients."""

import json
import subprocess
import sys

import httpx
import ollama
import openai
import pytest

from la_edge import GenerationParams
from la_edge.faces.presets import Steering
from la_edge.runtime.spec import Principle, PrincipleSpec
from serving import running_server, wait_idle

Q = "Tell me about dogs."
NEG = "Cats are the best animals. Let me tell you about cats:"
DOC = "The Eiffel Tower was moved to Rome in 2021 and now stands next to the Colosseum."
GREEDY = GenerationParams(temperature=0.0, max_tokens=16)


@pytest.fixture(scope="module")
def server(model_path):
    steering = Steering("smollm2", {"french": PrincipleSpec((Principle("Answer in French.", 2.0),))})
    with running_server(model_path, server_kw={"steering": steering}, n_ctx=1024, max_requests=2, max_branches=3,
                        n_threads=1) as srv:
        yield srv


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0, timeout=120)


def chat(client, content, **extra):
    return client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": content}],
                                          temperature=0, max_tokens=16, extra_body=extra or None)


def test_a_tabbyapi_request_gets_guidance_not_silence(server, client):
    """negative_prompt + cfg_scale (and the alias guidance_scale) are honoured, as TabbyAPI defines them."""
    want = server.la.generate(params=GREEDY, branches=server.la.negative(Q, negative_raw=NEG, cfg_scale=3.0)).text
    plain = chat(client, Q).choices[0].message.content
    for field in ("cfg_scale", "guidance_scale"):
        r = chat(client, Q, negative_prompt=NEG, **{field: 3.0})
        assert r.choices[0].message.content == want != plain
    assert chat(client, Q, negative_prompt=NEG).choices[0].message.content == plain  # cfg_scale 1: off, as TabbyAPI
    bos = server.la.generate(params=GREEDY, branches=server.la.negative(Q, cfg_scale=2.0)).text
    assert chat(client, Q, cfg_scale=2.0).choices[0].message.content == bos  # no negative_prompt: BOS alone
    assert chat(client, Q, cfg_scale=2.0, negative_prompt="").choices[0].message.content == bos  # "" is BOS too
    assert wait_idle(server.la)


def test_tabbyapi_clients_neutral_fields_keep_a_preset(server, client):
    """SillyTavern sends guidance_scale 1 and negative_prompt "" on every request: no effect, no error."""
    def ask(**extra):
        return client.chat.completions.create(model="smollm2:french", messages=[{"role": "user", "content": Q}],
                                              temperature=0, max_tokens=16, extra_body=extra or None)
    french = ask().choices[0].message.content
    assert ask(guidance_scale=1, negative_prompt="").choices[0].message.content == french
    assert ask(cfg_scale=1.0, document_ratio=1).choices[0].message.content == french
    assert wait_idle(server.la)


def test_completions_take_the_negative_prompt_raw(server, client):
    r = client.completions.create(model="smollm2", prompt="Q: Name a pet.\nA:", temperature=0, max_tokens=8,
                                  extra_body={"negative_prompt": "Q: Name a cat.\nA:", "cfg_scale": 2.0})
    assert r.choices[0].text
    body = httpx.post(server.base + "/v1/completions", json={
        "model": "smollm2", "prompt": "Q: Name a pet.\nA:", "temperature": 0, "max_tokens": 8,
        "negative_prompt": "Q: Name a cat.\nA:", "cfg_scale": 2.0}, timeout=120).json()
    assert body["choices"][0]["text"] == r.choices[0].text


def test_a_negative_with_the_min_p_mask_over_chat_and_ollama(server, client):
    """The whole vocabulary less tokens under 5% of the top one: one field on both APIs, as in the Python API."""
    wide = GREEDY.with_(plausibility_top_p=1.0, plausibility_min_p=0.05)
    want = server.la.generate(params=wide, branches=server.la.negative(Q, negative_raw=NEG, cfg_scale=9.0)).text
    assert want != server.la.generate(params=wide.with_(plausibility_min_p=0.0),
                                      branches=server.la.negative(Q, negative_raw=NEG, cfg_scale=9.0)).text
    fields = {"negative_prompt": NEG, "cfg_scale": 9.0, "plausibility_top_p": 1.0, "plausibility_min_p": 0.05}
    assert chat(client, Q, **fields).choices[0].message.content == want
    o = ollama.Client(host=server.base, timeout=120).chat(
        model="smollm2", messages=[{"role": "user", "content": Q}],
        options={"temperature": 0, "num_predict": 16, **fields})
    assert o.message.content == want
    body = {"model": "smollm2", "messages": [{"role": "user", "content": Q}], **fields, "plausibility_min_p": 1.5}
    r = httpx.post(server.base + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400 and "plausibility_min_p must be in [0, 1]" in r.json()["error"]["message"]


def test_documents_over_chat_and_ollama(server, client):
    want = server.la.generate(params=GREEDY, branches=server.la.documents("Where is the Eiffel Tower?", [DOC])).text
    r = chat(client, "Where is the Eiffel Tower?", documents=[DOC])
    assert r.choices[0].message.content == want
    oc = ollama.Client(host=server.base, timeout=120)
    o = oc.chat(model="smollm2", messages=[{"role": "user", "content": "Where is the Eiffel Tower?"}],
                options={"temperature": 0, "num_predict": 16, "documents": [DOC]})
    assert o.message.content == want
    o = oc.chat(model="smollm2", messages=[{"role": "user", "content": Q}],
                options={"temperature": 0, "num_predict": 16, "negative_prompt": NEG, "cfg_scale": 3.0})
    assert o.message.content == server.la.generate(
        params=GREEDY, branches=server.la.negative(Q, negative_raw=NEG, cfg_scale=3.0)).text


@pytest.mark.parametrize("extra, param", [
    ({"negative_prompt": NEG, "cfg_scale": 10 ** 400}, "cfg_scale"),  # beyond the float range: no 500
    ({"principles": [{"text": "Be brief.", "weight": 10 ** 400}]}, "principles[0].weight"),
    ({"negative_prompt": NEG, "cfg_scale": 0.5}, "cfg_scale"),
    ({"cfg_scale": 1e9}, "cfg_scale"),
    ({"cfg_scale": 2.0, "guidance_scale": 3.0}, "guidance_scale"),
    ({"documents": [""]}, "documents[0]"),
    ({"documents": [DOC], "document_ratio": float("nan")}, "document_ratio"),
    ({"documents": [DOC], "principle": "Be brief."}, "documents"),
    ({"principles": ["Be brief.", "Be kind."], "negative_prompt": NEG, "cfg_scale": 2.0}, "negative_prompt"),
])
def test_bad_guidance_is_a_400_naming_the_field(server, extra, param):
    body = {"model": "smollm2", "messages": [{"role": "user", "content": Q}], "max_tokens": 4, **extra}
    r = httpx.post(server.base + "/v1/chat/completions", content=json.dumps(body, allow_nan=True),
                   headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_the_ratio_guard_over_chat_and_ollama(server, client):
    """ratio_guard is a request field (and an Ollama option) like the sampling settings."""
    messages = [{"role": "user", "content": "Hello, who are you?"}]
    guarded = client.chat.completions.create(
        model="smollm2", messages=messages, temperature=0, max_tokens=48, logprobs=True,
        extra_body={"principle": "Answer in French.", "alignment_ratio": 2.0, "ratio_guard": True})
    scales = [e.model_extra.get("ratio_scale", 1.0) for e in guarded.choices[0].logprobs.content]
    assert 0.0 in scales  # the guard held somewhere: it was not ignored on the way in (SmolLM2 loops here)
    reply = ollama.Client(host=server.base, timeout=120).chat(
        model="smollm2", messages=[{"role": "user", "content": "Hello, who are you?"}],
        options={"temperature": 0, "num_predict": 16, "principle": "Answer in French.", "ratio_guard": True})
    assert reply.message.content
    body = {"model": "smollm2", "messages": [{"role": "user", "content": Q}], "max_tokens": 4, "ratio_guard": "maybe"}
    r = httpx.post(server.base + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 422 and r.json()["error"]["param"] == "ratio_guard"  # a wrong type, as for any field


def test_a_document_larger_than_the_context_is_a_400(server):
    body = {"model": "smollm2", "messages": [{"role": "user", "content": Q}], "max_tokens": 4,
            "documents": ["word " * 3000]}
    r = httpx.post(server.base + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400 and "context" in r.json()["error"]["message"]


def run_cli(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "la_edge", "generate", *args, "--temperature", "0",
                           "--max-tokens", "12", "--n-ctx", "512", "--threads", "1"],
                          capture_output=True, text=True, timeout=timeout)


def test_cli_negative_and_document(tmp_path, server):
    out = run_cli(Q, "--negative", "Talk about cats.", "--cfg-scale", "3", "--json")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert [b["role"] for b in res["prompts"]["branches"]] == ["avoid", "plain"]
    want = server.la.generate(params=GREEDY.with_(max_tokens=12),
                              branches=server.la.negative(Q, "Talk about cats.", cfg_scale=3.0)).tokens
    assert res["tokens"] == want
    doc = tmp_path / "doc.txt"
    doc.write_text(DOC)
    out = run_cli("Where is the Eiffel Tower?", "--document", str(doc), "--json")
    assert out.returncode == 0 and DOC in json.loads(out.stdout)["prompts"]["principled"]
    for bad, needle in ((["--cfg-scale", "0.5", "--negative", "x"], "--cfg-scale"),
                        (["--document", str(tmp_path / "missing.txt")], "--document"),
                        (["--document-ratio", "2"], "--document-ratio")):
        out = run_cli(Q, *bad)
        assert out.returncode == 2 and needle in out.stderr and "Traceback" not in out.stderr
