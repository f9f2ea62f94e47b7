"""A real server on 127.0.0.1 driven by the official openai client."""

import concurrent.futures as cf
import json
import random
import resource
import time

import httpx
import openai
import pytest

from la_edge import GenerationParams, RequestTimeoutError
from serving import running_server, wait_idle

PRINCIPLES = ["Answer in French.", "Be extremely brief.", "Answer like a pirate.", "Use a bullet list.",
              "Explain it to a child.", "Be very formal.", "Mention the ocean.", "Answer in one sentence."]


@pytest.fixture(scope="module")
def server(model_path):
    # One llama.cpp thread: spinning thread pools slow down 10x on a shared, busy CPU.
    with running_server(model_path, n_ctx=1024, max_requests=8, max_queue=4, n_threads=1) as srv:
        yield srv


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0, timeout=120)


def chat(client, content, principle=None, **kw):
    extra = {"principle": principle} if principle else {}
    extra.update(kw.pop("extra", {}))
    return client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": content}], temperature=0, max_tokens=kw.pop("max_tokens", 24),
        extra_body=extra or None, **kw)


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == ["smollm2"]
    assert httpx.get(server.base + "/health").json()["status"] == "ok"


def test_chat_non_streaming_and_streaming_agree(server, client):
    r = chat(client, "Why is the sky blue?", "Answer in French.")
    assert r.choices[0].message.content and r.usage.completion_tokens > 0
    stream = chat(client, "Why is the sky blue?", "Answer in French.", stream=True,
                  stream_options={"include_usage": True})
    parts, usage = [], None
    for ev in stream:
        if ev.choices:
            parts.append(ev.choices[0].delta.content or "")
        if ev.usage:
            usage = ev.usage
    assert "".join(parts) == r.choices[0].message.content
    assert usage.completion_tokens == r.usage.completion_tokens
    assert wait_idle(server.la)


def test_principle_changes_output(client):
    a = chat(client, "What is rain?", max_tokens=32).choices[0].message.content
    b = chat(client, "What is rain?", "Answer in French.", max_tokens=32).choices[0].message.content
    assert a != b


def test_alignment_ratio_and_logprobs(client):
    r = chat(client, "Name a fruit.", "Be brief.", extra={"alignment_ratio": 4.0}, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert content and len(content[0].top_logprobs) == 3 and content[0].logprob <= 0


def test_completions_endpoint(client):
    r = client.completions.create(model="smollm2", prompt="The capital of France is", max_tokens=8, temperature=0,
                                  extra_body={"principle": "Be brief."})
    assert r.choices[0].text and r.usage.completion_tokens > 0


def test_eight_concurrent_equal_one_by_one(server, client):
    q = "Tell me about the moon."
    alone = [chat(client, q, p, max_tokens=32).choices[0].message.content for p in PRINCIPLES]
    with cf.ThreadPoolExecutor(8) as ex:
        together = list(ex.map(lambda p: chat(client, q, p, max_tokens=32).choices[0].message.content, PRINCIPLES))
    assert together == alone
    assert wait_idle(server.la)


def test_client_disconnect_mid_stream_frees_sequences(server):
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "Write a long story."}],
            "max_tokens": 200, "stream": True, "principle": "Be dramatic."}
    with httpx.stream("POST", server.base + "/v1/chat/completions", json=body, timeout=60) as r:
        lines = 0
        for line in r.iter_lines():
            lines += line.startswith("data:")
            if lines >= 3:
                break
    assert wait_idle(server.la)


@pytest.mark.parametrize("payload, status", [
    (b"{not json", 400),
    (b"[1, 2]", 400),
    (json.dumps({"messages": "hello"}).encode(), 422),
    (json.dumps({"messages": []}).encode(), 422),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}).encode(), 422),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "temperature": -1}).encode(), 400),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "alignment_ratio": 1e9}).encode(), 400),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "principle": ""}).encode(), 400),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}).encode(), 400),
])
def test_bad_requests_get_openai_errors(server, client, payload, status):
    r = httpx.post(server.base + "/v1/chat/completions", content=payload, headers={"content-type": "application/json"})
    assert r.status_code == status
    assert "message" in r.json()["error"]
    assert chat(client, "hi", max_tokens=2).choices[0].message.content is not None


@pytest.mark.parametrize("bad", [0, -1.5])
def test_bad_timeout_is_400_naming_the_field(client, bad):
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, "hi", max_tokens=2, extra={"timeout": bad})
    assert "timeout" in e.value.message and e.value.param == "timeout"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="smollm2", prompt="hi", max_tokens=2, extra_body={"timeout": bad})
    assert "timeout" in e.value.message and e.value.param == "timeout"


@pytest.mark.parametrize("stop", [["x" * 513], ["a"] * 17, "", [""]])
def test_stop_beyond_its_limits_is_400_naming_the_field(client, stop):
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, "hi", max_tokens=2, stop=stop)
    assert e.value.param == "stop" and "400 - stop" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="smollm2", prompt="hi", max_tokens=2, stop=stop)
    assert e.value.param == "stop"


def test_a_request_past_its_deadline_ends_with_a_timeout_error_and_frees_its_sequences(server, client):
    # Python API: RequestTimeoutError; HTTP: 504 (an error event in a stream); the next request works.
    params = GenerationParams(temperature=0, max_tokens=200, ignore_eos=True, timeout=0.05)
    with pytest.raises(RequestTimeoutError):
        server.la.generate("Write a long story.", "Be dramatic.", params)
    long = dict(max_tokens=200, extra={"timeout": 0.05, "ignore_eos": True})
    with pytest.raises(openai.InternalServerError) as e:
        chat(client, "Write a long story.", "Be dramatic.", **long)
    assert e.value.status_code == 504 and e.value.code == "request_timeout" and "timeout" in e.value.message
    with pytest.raises(openai.APIError) as e:
        for _ in chat(client, "Write a long story.", None, stream=True, **long):
            pass
    assert e.value.code == "request_timeout"
    assert wait_idle(server.la)
    assert chat(client, "Say hi.", "Be brief.", max_tokens=4).choices[0].message.content


def test_the_servers_request_timeout_applies_to_requests_that_bring_none(model_path):
    with running_server(model_path, server_kw={"request_timeout": 0.05}, n_ctx=512, n_threads=1) as srv:
        client = openai.OpenAI(base_url=srv.base + "/v1", api_key="unused", max_retries=0, timeout=120)
        with pytest.raises(openai.InternalServerError) as e:
            chat(client, "Write a long story.", max_tokens=200, extra={"ignore_eos": True})
        assert e.value.status_code == 504
        assert chat(client, "Say hi.", max_tokens=4, extra={"timeout": 60}).choices[0].message.content


def test_prompt_beyond_context_and_unknown_route(server, client):
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, "word " * 1200, "Be brief.")
    assert e.value.code == "context_length_exceeded"
    assert httpx.get(server.base + "/v1/nope").status_code == 404
    big = b'{"messages": [{"role": "user", "content": "' + b"a" * (2 << 20) + b'"}]}'
    assert httpx.post(server.base + "/v1/chat/completions", content=big).status_code == 413


def test_api_key(server):
    server.api_key = "sekret"
    try:
        bad = openai.OpenAI(base_url=server.base + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        good = openai.OpenAI(base_url=server.base + "/v1", api_key="sekret", max_retries=0)
        assert good.models.list().data
    finally:
        server.api_key = None


def test_over_capacity_burst_gets_429_and_server_recovers(server, client):
    def one(i):
        try:
            chat(client, f"Count to {i}.", PRINCIPLES[i % 8], max_tokens=48)
            return 200
        except openai.RateLimitError as exc:
            assert exc.response.headers.get("retry-after")
            return 429

    with cf.ThreadPoolExecutor(24) as ex:
        codes = list(ex.map(one, range(24)))
    assert codes.count(429) > 0 and codes.count(200) >= 8
    assert wait_idle(server.la)
    assert chat(client, "hi", max_tokens=2).choices[0].message.content is not None


@pytest.mark.slow
def test_soak_mixed_requests_with_cancellations(server, client):
    rnd = random.Random(1234)

    def one(i):
        body = {"model": "smollm2", "messages": [{"role": "user", "content": f"Question {i}: tell me a fact."}],
                "max_tokens": rnd.randint(1, 24), "temperature": rnd.choice([0, 0.7, 1.2]),
                "seed": rnd.randint(0, 1000), "top_p": rnd.choice([1.0, 0.9]),
                "stream": rnd.random() < 0.5}
        if rnd.random() < 0.7:
            body["principle"] = rnd.choice(PRINCIPLES)
            body["alignment_ratio"] = rnd.choice([0, 1, 2, 4])
        cancel = body["stream"] and rnd.random() < 0.3
        for _ in range(50):  # bounded retries on 429
            if body["stream"]:
                with httpx.stream("POST", server.base + "/v1/chat/completions", json=body, timeout=60) as r:
                    if r.status_code == 429:
                        time.sleep(0.2)
                        continue
                    for n, _line in enumerate(r.iter_lines()):
                        if cancel and n >= 2:
                            break
                    return r.status_code
            r = httpx.post(server.base + "/v1/chat/completions", json=body, timeout=60)
            if r.status_code != 429:
                return r.status_code
            time.sleep(0.2)
        return 429

    rss = []
    with cf.ThreadPoolExecutor(10) as ex:
        for batch in range(3):
            codes = list(ex.map(one, range(batch * 100, batch * 100 + 100)))
            assert set(codes) <= {200}, codes
            assert wait_idle(server.la)
            rss.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    assert rss[2] - rss[1] < 64 * 1024, rss  # flat memory: < 64 MiB growth over the last 100
    assert server.la.engine.leaked_sequences() == []


# ---- several principles, things to avoid, adaptive ratio (issue 18) --------------------------------
def test_principles_list_avoid_and_branch_prompts(client):
    extra = {"principles": [{"text": "Answer in French.", "ratio": 2.0, "weight": 2},
                            {"text": "Be brief.", "ratio": 1.0}],
             "avoid": [{"text": "Use technical jargon.", "ratio": 1.5}]}
    r = chat(client, "What is rain?", max_tokens=6, extra=extra)
    assert r.choices[0].message.content and r.usage.completion_tokens > 0
    branches = r.model_extra["la_edge"]["prompts"]["branches"]
    assert [b["role"] for b in branches] == ["principled", "principled", "avoid", "plain"]
    assert "Be brief." in branches[1]["text"] and "Use technical jargon." in branches[2]["text"]


def test_one_principle_as_a_list_equals_the_principle_field(client):
    a = chat(client, "Name a fruit.", "Be brief.", max_tokens=8, extra={"alignment_ratio": 3.0})
    b = chat(client, "Name a fruit.", max_tokens=8,
             extra={"principles": [{"text": "Be brief.", "ratio": 3.0}], "ratio_schedule": "fixed"})
    assert a.choices[0].message.content == b.choices[0].message.content
    assert "la_edge" not in (b.model_extra or {})  # K = 2: today's body


def test_adaptive_ratio_reports_ratio_scale_in_logprobs(client):
    extra = {"principle": "Answer in French.", "ratio_schedule": "adaptive"}
    r = chat(client, "Why is the sky blue?", max_tokens=6, extra=extra, logprobs=True)
    scales = [e.model_extra.get("ratio_scale") for e in r.choices[0].logprobs.content]
    assert any(s is not None and 0 <= s <= 1 for s in scales), scales
    c = client.completions.create(model="smollm2", prompt="The sky is", max_tokens=4, temperature=0, logprobs=0,
                                  extra_body={"principles": ["Be poetic.", "Be brief."],
                                              "ratio_schedule": "adaptive"})
    assert len(c.choices[0].logprobs.model_extra["ratio_scale"]) == len(c.choices[0].logprobs.tokens)


@pytest.mark.parametrize("extra, param", [
    ({"principles": [{"text": ""}]}, "principles[0].text"),
    ({"principles": [{"text": "A."}, {"text": "B.", "ratio": 1e9}]}, "principles[1].ratio"),
    ({"principles": [{"text": "A.", "weight": 0}, {"text": "B.", "weight": 0}]}, "principles"),
    ({"principles": ["A.", "B.", "C."], "avoid": ["D."]}, "avoid"),
    ({"principles": ["A.", "B.", "C.", "D."]}, "principles"),
    ({"principle": "A.", "avoid": [{"text": "B.", "ratio": -1}]}, "avoid[0].ratio"),
    ({"avoid": [{"text": "B.", "ratio": 200}]}, "avoid[0].ratio"),  # (avoid alone is a negative prompt)
    ({"principle": "A.", "ratio_schedule": "sometimes"}, "ratio_schedule"),
    ({"principle": "A.", "principles": ["B."]}, "principles"),
    ({"principles": [{"text": "A.", "ratoi": 2}]}, "principles[0].ratoi"),
])
def test_bad_principle_fields_are_400_naming_the_field(client, extra, param):
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, "hi", max_tokens=2, extra=extra)
    assert e.value.param == param, e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="smollm2", prompt="hi", max_tokens=2, extra_body=extra)
    assert e.value.param == param


def test_nan_in_a_principle_is_400_naming_the_field(server):
    # the openai client cannot send NaN (strict JSON); a raw body can
    body = b'{"messages": [{"role": "user", "content": "hi"}], "principles": [{"text": "A.", "ratio": NaN}]}'
    r = httpx.post(server.base + "/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "principles[0].ratio"


def test_wrong_principle_types_are_422_naming_the_field(client):
    with pytest.raises(openai.UnprocessableEntityError) as e:
        chat(client, "hi", max_tokens=2, extra={"principles": [{"text": "A.", "weight": "heavy"}]})
    assert e.value.param == "principles[0].weight"
