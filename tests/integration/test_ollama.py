"""Ollama's API through the official `ollama` client, against `la-edge serve` started as a user would
(presets from flags and a file, an API key), on 127.0.0.1. Answers equal the OpenAI path's."""

import json
import queue
import socket
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

ollama = pytest.importorskip("ollama")

KEY = "ollama-secret"
FRENCH = "Answer in French."
GREEDY = {"temperature": 0, "num_predict": 12}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def serve(tmp_path_factory):
    """`la-edge serve` in a subprocess; yields (base URL, its ready line)."""
    presets = tmp_path_factory.mktemp("presets") / "presets.toml"
    presets.write_text('[presets.brief]\nprinciples = [{text = "Be brief.", ratio = 2}]\n')
    port = _free_port()
    cmd = [sys.executable, "-m", "la_edge", "serve", "--port", str(port), "--model-name", "smollm2",
           "--preset", f"french={FRENCH}@3", "--presets-file", str(presets), "--api-key", KEY,
           "--n-ctx", "1024", "--max-requests", "2", "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: "queue.Queue[str]" = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    ready, end = None, time.time() + 120
    try:
        while ready is None and time.time() < end:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                if proc.poll() is not None:
                    break
                continue
            if line.startswith("la-edge serve: ready"):
                ready = line.strip()
        if ready is None:
            pytest.fail("la-edge serve printed no ready line")
        yield f"http://127.0.0.1:{port}", ready
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def client(serve):
    return ollama.Client(host=serve[0], headers={"Authorization": f"Bearer {KEY}"}, timeout=120)


@pytest.fixture(scope="module")
def oai(serve):
    return openai.OpenAI(base_url=serve[0] + "/v1", api_key=KEY, max_retries=0, timeout=120)


def user(text="What is rain?"):
    return [{"role": "user", "content": text}]


def test_serve_prints_one_ready_line(serve):
    base, line = serve
    assert "model smollm2 (chat template: gguf), n_ctx 1024" in line
    assert f"API {base}/v1 and {base}/api (Ollama)" in line and f"web page {base}/" in line
    assert "presets: smollm2:brief, smollm2:french" in line and "API key required" in line


def test_list_show_ps_version(serve, client):
    models = client.list().models
    assert [m.model for m in models] == ["smollm2", "smollm2:brief", "smollm2:french"]
    d = models[0].details
    assert d.format == "gguf" and d.family == "llama" and d.quantization_level == "Q4_1" and models[0].size > 0
    info = client.show("smollm2:french")
    assert info.capabilities == ["completion"] and info.modelinfo["llama.context_length"] == 1024
    assert "Answer in French." in info.modelfile
    assert [m.model for m in client.ps().models] == ["smollm2"]
    v = httpx.get(serve[0] + "/api/version", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert v["version"].count(".") == 2 and "la_edge" in v


def test_chat_equals_the_openai_path_with_counts_and_durations(client, oai):
    r = client.chat(model="smollm2:french", messages=user(), options=GREEDY, stream=False)
    o = oai.chat.completions.create(model="smollm2:french", messages=user(), temperature=0, max_tokens=12)
    assert r.message.role == "assistant" and r.message.content == o.choices[0].message.content
    assert r.done and r.done_reason == o.choices[0].finish_reason
    assert (r.prompt_eval_count, r.eval_count) == (o.usage.prompt_tokens, o.usage.completion_tokens)
    assert r.total_duration >= r.prompt_eval_duration + r.eval_duration > 0 and r.load_duration >= 0
    assert r.model == "smollm2:french"


def test_streaming_chat_joins_to_the_whole_answer(client):
    whole = client.chat(model="smollm2", messages=user(), options=GREEDY)
    parts = list(client.chat(model="smollm2", messages=user(), options=GREEDY, stream=True))
    assert "".join(p.message.content for p in parts) == whole.message.content
    assert all(not p.done for p in parts[:-1]) and parts[-1].done and parts[-1].eval_count == whole.eval_count


def test_preset_by_model_name_equals_principle_in_options(client):
    a = client.chat(model="smollm2:french", messages=user(), options=GREEDY)
    b = client.chat(model="smollm2", messages=user(), options={**GREEDY, "principle": FRENCH, "alignment_ratio": 3})
    plain = client.chat(model="smollm2", messages=user(), options=GREEDY)
    assert a.message.content == b.message.content != plain.message.content


def test_generate_plain_raw_and_system_as_principle(client, oai):
    g = client.generate(model="smollm2", prompt="What is rain?", options=GREEDY)
    assert g.response == client.chat(model="smollm2", messages=user(), options=GREEDY).message.content
    raw = client.generate(model="smollm2:brief", prompt="The capital of France is", raw=True, options=GREEDY)
    o = oai.completions.create(model="smollm2", prompt="The capital of France is", temperature=0, max_tokens=12,
                               extra_body={"principle": "Be brief."})
    assert raw.response == o.choices[0].text and raw.eval_count == o.usage.completion_tokens
    moved = client.generate(model="smollm2", prompt="What is rain?", system="Always answer in German.",
                            options={**GREEDY, "principle_from": "system"})
    given = client.chat(model="smollm2", messages=user(), options={**GREEDY, "principle": "Always answer in German."})
    assert moved.response == given.message.content and moved.prompt_eval_count == given.prompt_eval_count
    streamed = list(client.generate(model="smollm2", prompt="What is rain?", options=GREEDY, stream=True))
    assert "".join(p.response for p in streamed) == g.response and streamed[-1].done


def test_logprobs_and_ignored_fields(client):
    r = client.chat(model="smollm2", messages=user(), options={**GREEDY, "num_ctx": 8192}, keep_alive="5m",
                    logprobs=True, top_logprobs=2)
    assert len(r.logprobs) == r.eval_count and "".join(t.token for t in r.logprobs) == r.message.content
    assert all(1 <= len(t.top_logprobs) <= 2 and t.top_logprobs[0].token == t.token for t in r.logprobs)  # greedy


def test_an_empty_request_loads(client):
    assert client.generate(model="smollm2").done_reason == "load"
    assert client.chat(model="smollm2:french").done_reason == "load"


def test_bad_input_gets_ollama_errors(serve, client):
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="smollm2:german", messages=user())
    assert e.value.status_code == 404 and "smollm2:french" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="smollm2", messages=user(), format="json")
    assert e.value.status_code == 400 and e.value.error.startswith("format")
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="smollm2", messages=user(), options={"temperature": "hot"})
    assert e.value.status_code == 400 and "options.temperature" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        client.generate(model="smollm2", prompt="hi", options={"num_predict": 0})
    assert e.value.status_code == 400 and e.value.error.startswith("options.num_predict")
    with pytest.raises(ollama.ResponseError) as e:
        ollama.Client(host=serve[0]).list()
    assert e.value.status_code == 401
    auth = {"Authorization": f"Bearer {KEY}"}
    for body, field in [({"messages": "hi"}, "messages"), ({"messages": user(), "stream": "yes"}, "stream"),
                        ({"messages": user(), "tools": [{"type": "function"}]}, "tools"),
                        ({"messages": user(), "think": True}, "think"), ({"messages": user(), "options": 3}, "options"),
                        ({"messages": [{"role": "user", "content": "hi", "images": ["aGk="]}]}, "images"),
                        ({"messages": [{"role": "tool", "content": "hi"}]}, "role")]:
        r = httpx.post(serve[0] + "/api/chat", json={"model": "smollm2", **body}, headers=auth, timeout=60)
        assert r.status_code == 400 and field in r.json()["error"], (body, r.text)
    for body, field in [({"prompt": "hi", "template": "{{ .Prompt }}"}, "template"),
                        ({"prompt": "hi", "suffix": "x"}, "suffix"), ({"prompt": "hi", "context": [1, 2]}, "context"),
                        ({"prompt": 3}, "prompt"), ({}, "model")]:
        model = {} if field == "model" else {"model": "smollm2"}
        r = httpx.post(serve[0] + "/api/generate", json={**model, **body}, headers=auth, timeout=60)
        assert r.status_code == 400 and field in r.json()["error"], (body, r.text)
    r = httpx.post(serve[0] + "/api/generate", headers=auth, timeout=60,
                   json={"model": "smollm2", "prompt": "hi", "stream": False, "options": {"num_predict": 2},
                         "an_unknown_field": {"x": 1}})
    assert r.status_code == 200 and r.json()["done"]  # unknown fields are ignored, as Ollama does


def test_hostile_bodies_get_ollama_errors_never_a_5xx(serve):
    from hypothesis import HealthCheck, example, given, settings
    from hypothesis import strategies as st

    scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**65), 2**65), st.floats(),
                        st.text(max_size=12), st.sampled_from(["", "json", "smollm2", "smollm2:nope", "system"]))
    anything = st.recursive(scalars, lambda x: st.lists(x, max_size=3) | st.dictionaries(st.text(max_size=8), x,
                                                                                           max_size=3), max_leaves=8)
    message = st.fixed_dictionaries({"role": st.one_of(st.sampled_from(["user", "system", "assistant"]), anything),
                                     "content": st.one_of(st.text(max_size=20), anything)})
    fields = {"model": st.one_of(st.sampled_from(["smollm2", "smollm2:french", "smollm2:nope"]), anything),
              "messages": st.one_of(st.lists(message, max_size=3), anything), "prompt": st.one_of(st.text(), anything),
              "options": st.one_of(st.dictionaries(st.sampled_from(["temperature", "top_k", "top_p", "stop", "seed",
                                                                   "num_predict", "principle", "alignment_ratio",
                                                                   "num_ctx"]), anything, max_size=4), anything),
              "stream": st.one_of(st.booleans(), anything), "raw": anything, "system": anything, "format": anything,
              "tools": anything, "keep_alive": anything, "logprobs": anything, "top_logprobs": anything,
              "principle_from": anything, "images": anything, "think": anything}
    auth = {"Authorization": f"Bearer {KEY}"}

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(path=st.sampled_from(["/api/chat", "/api/generate", "/api/show"]),
           body=st.dictionaries(st.sampled_from(sorted(fields)), st.none(), max_size=6).flatmap(
               lambda keys: st.fixed_dictionaries({k: fields[k] for k in keys})))
    @example(path="/api/chat", body={"model": "smollm2", "format": float("inf"), "messages": [
        {"role": "user", "content": "hi"}]})  # once crashed the test itself: httpx's json= refuses inf
    @example(path="/api/generate", body={"model": "smollm2", "prompt": "hi", "options": {"temperature": float("nan")}})
    def check(path, body):
        if isinstance(body.get("options"), dict):
            body["options"]["num_predict"] = 2  # keep generation short
        elif "options" not in body:
            body["options"] = {"num_predict": 2}
        # Sent as bytes: NaN and Infinity (which json= refuses to encode) must get a 4xx too.
        raw = json.dumps(body, allow_nan=True).encode()
        r = httpx.post(serve[0] + path, content=raw, headers={**auth, "Content-Type": "application/json"},
                       timeout=60)
        assert r.status_code < 500, (body, r.text)
        if r.status_code >= 400:
            assert isinstance(r.json()["error"], str)
        else:
            for line in r.text.splitlines():  # NDJSON or one object: each line is JSON
                assert "error" not in json.loads(line), (body, line)

    check()
