"""Hostile clients against a real server on 127.0.0.1: every answer is a 2xx/4xx/503 with an OpenAI error body."""

import concurrent.futures as cf
import json
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from la_edge import Aligner
from la_edge.faces.server import BackgroundServer, Server
from serving import running_server, wait_idle

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
THREADS = 1  # one llama.cpp thread: spinning thread pools slow down 10x on a shared, busy CPU


def _no_constants(name):
    raise ValueError(f"{name} is not JSON")


def strict_json(text):
    """json.loads that rejects NaN / Infinity / -Infinity (which are not JSON)."""
    return json.loads(text, parse_constant=_no_constants)


@pytest.fixture(scope="module")
def server(model_path):
    with running_server(model_path, n_ctx=1024, max_requests=8, max_queue=4, n_threads=THREADS) as srv:
        yield srv


def post(server, path, body, **kw):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(server.base + path, content=data, headers={"content-type": "application/json"},
                      timeout=kw.pop("timeout", 60), **kw)


def assert_openai_error(r, status):
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


def user(content, **extra):
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 4, "temperature": 0, **extra}


# ---- bad strings and bodies -----------------------------------------------------------------
@pytest.mark.parametrize("path, raw", [
    (CHAT, b'{"messages": [{"role": "user", "content": "hi \\ud800"}], "max_tokens": 2}'),
    (CHAT, b'{"messages": [{"role": "user", "content": "hi"}], "principle": "\\udfff", "max_tokens": 2}'),
    (CHAT, b'{"messages": [{"role": "\\ud800", "content": "hi"}], "max_tokens": 2}'),
    (CHAT, b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\ud83d"}]}]}'),
    (COMPLETIONS, b'{"prompt": "hi \\ud800", "max_tokens": 2}'),
    (COMPLETIONS, b'{"prompt": "hi", "principle": "\\ud800", "max_tokens": 2}'),
    (COMPLETIONS, b'{"prompt": "hi", "principled_prompt": "\\ud800", "max_tokens": 2}'),
])
def test_lone_surrogates_are_400(server, path, raw):
    assert_openai_error(post(server, path, raw), 400)


@pytest.mark.parametrize("raw", [
    b"[" * 100000 + b"]" * 100000,
    b'{"messages": [{"role": "user", "content": "hi"}], "stop": ' + b"[" * 100000 + b"]" * 100000 + b"}",
    b'{"messages": [{"role": "user", "content": "hi"}], "metadata": ' + b'{"a":' * 50000 + b"1" + b"}" * 50001,
])
def test_deeply_nested_json_is_400(server, raw):
    assert_openai_error(post(server, CHAT, raw), 400)


@pytest.mark.parametrize("path, body, needle", [
    (CHAT, user("hi", max_tokens=0), "max_tokens"),
    (CHAT, user("hi", max_completion_tokens=0), "max_tokens"),
    (COMPLETIONS, {"prompt": "hi", "max_tokens": 0}, "max_tokens"),
    (CHAT, user("hi", principle=""), "principle"),
    (CHAT, user("hi", principle="   "), "principle"),
    (COMPLETIONS, {"prompt": "hi", "principle": "", "max_tokens": 2}, "principle"),
    (COMPLETIONS, {"prompt": "hi", "principle": " \n", "max_tokens": 2}, "principle"),
    (COMPLETIONS, {"prompt": "hi", "principled_prompt": "", "max_tokens": 2}, "principled_prompt"),
    (CHAT, {"messages": [{"role": "", "content": "hi"}], "max_tokens": 2}, "role"),
    (CHAT, {"messages": [{"role": "robot", "content": "hi"}], "max_tokens": 2}, "role"),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "image_url"),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "text"),
    (CHAT, user("hi", timeout=0), "timeout"),
    (CHAT, b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "timeout": 1e999}', "timeout"),
    (COMPLETIONS, {"prompt": "hi", "max_tokens": 2, "timeout": -3}, "timeout"),
])
def test_bad_values_are_400_that_name_the_field(server, path, body, needle):
    err = assert_openai_error(post(server, path, body), 400)
    assert needle in err["message"] or needle == err["param"], err


def test_content_may_be_a_list_of_text_parts(server):
    parts = post(server, CHAT, user([{"type": "text", "text": "Say hi"}, {"type": "text", "text": "to me."}]))
    joined = post(server, CHAT, user("Say hi\nto me."))
    assert parts.status_code == 200 and joined.status_code == 200
    assert parts.json()["choices"][0]["message"]["content"] == joined.json()["choices"][0]["message"]["content"]


def test_empty_principled_prompt_is_never_the_text_none(server):
    r = post(server, COMPLETIONS, {"prompt": "The sky is", "principle": "Be brief.", "max_tokens": 2,
                                   "principled_prompt": None, "temperature": 0})
    assert r.status_code == 200


# ---- logprobs at the alignment extreme ----------------------------------------------------------
def test_extreme_ratio_logprobs_are_valid_json(server):
    # Sampling at T=0.7 keeps tokens whose aligned weight underflows: their logprob is -inf.
    body = {**user("Name a colour.", principle="Answer in French.", alignment_ratio=100, logprobs=True,
                   top_logprobs=20, max_tokens=6, seed=1), "temperature": 0.7}
    r = post(server, CHAT, body)
    assert r.status_code == 200, r.text
    content = strict_json(r.text)["choices"][0]["logprobs"]["content"]
    assert content and all(0 < len(c["top_logprobs"]) <= 20 for c in content)
    lps = [t["logprob"] for c in content for t in c["top_logprobs"]]
    assert all(-9999.0 <= lp <= 0 for lp in lps) and -9999.0 in lps  # the floor stands in for -inf
    with httpx.stream("POST", server.base + CHAT, json={**body, "stream": True}, timeout=60) as s:
        assert s.status_code == 200
        events = [line[6:] for line in s.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [strict_json(e) for e in events[:-1]]
    assert sum(1 for c in chunks if c["choices"] and c["choices"][0].get("logprobs")) == len(content)
    comp = post(server, COMPLETIONS, {"prompt": "Colours:", "principle": "Be brief.", "alignment_ratio": 100,
                                      "logprobs": 20, "max_tokens": 4, "seed": 1})
    assert comp.status_code == 200 and strict_json(comp.text)["choices"][0]["logprobs"]


# ---- 5xx and keep-alive ----------------------------------------------------------------------
def test_5xx_closes_the_keepalive_connection(server, monkeypatch):
    def boom(*a, **kw):
        raise RuntimeError("boom")

    monkeypatch.setattr(server.la, "submit", boom)
    with httpx.Client(base_url=server.base, timeout=30) as c:
        r = c.post(CHAT, json=user("hi"))
        assert_openai_error(r, 500)
        assert r.headers.get("connection", "").lower() == "close"
        assert "boom" not in r.text
        monkeypatch.undo()
        assert c.post(CHAT, json=user("hi")).status_code == 200
        assert c.get("/health").status_code == 200


# ---- cancellation --------------------------------------------------------------------------
def test_abandoned_non_streaming_requests_are_cancelled(server):
    # Each abandoned request alone needs 600 decode steps; cancelled ones stop within a poll.
    body = user("Write a very long story about the sea.", principle="Be dramatic.", max_tokens=600,
                ignore_eos=True, temperature=0.7)

    def abandon(_):
        try:
            return post(server, CHAT, body, timeout=0.5).status_code
        except httpx.TimeoutException:
            return "abandoned"

    assert wait_idle(server.la)
    steps0 = server.la.engine.steps
    with cf.ThreadPoolExecutor(8) as ex:
        assert list(ex.map(abandon, range(8))) == ["abandoned"] * 8
    t0 = time.perf_counter()
    r = post(server, CHAT, user("Say hi.", max_tokens=8))
    elapsed = time.perf_counter() - t0
    steps = server.la.engine.steps - steps0
    print(f"normal request after 8 abandoned ones: {elapsed:.2f} s; {steps} engine steps in all")
    assert r.status_code == 200
    assert steps < 300, steps  # not 600+: the normal request did not wait for an abandoned one to finish
    assert wait_idle(server.la, timeout=2)
    assert server.la.engine.leaked_sequences() == []


# ---- dead engine and shutdown ------------------------------------------------------------------
def test_dead_engine_gets_503_and_health_says_so(model_path):
    la = Aligner.load(model_path, n_ctx=256, max_requests=1, n_threads=THREADS)
    srv = Server(la, model_name="smollm2")
    http = BackgroundServer(srv)
    try:
        assert httpx.get(http.base_url + "/health").json()["status"] == "ok"
        la.engine.stop(5)
        t0 = time.perf_counter()
        r = httpx.post(http.base_url + CHAT, json=user("hi"), timeout=10)
        assert time.perf_counter() - t0 < 2
        err = assert_openai_error(r, 503)
        assert err["type"] == "server_error"
        h = httpx.get(http.base_url + "/health", timeout=10)
        assert h.status_code == 503 and h.json()["status"] != "ok" and "failure" in h.json()
    finally:
        http.stop()
        la.close()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_ends_open_requests_and_exits_cleanly(tmp_path, sig):
    # Shutdown is ordered: uvicorn, then the worker threads (a stream and a non-streaming wait are
    # open), then the model; the process exits 0 with nothing on stderr but what it logged on purpose.
    port = _free_port()
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "la_edge", "serve", "--port", str(port), "--n-ctx", "4096",
                             "--threads", str(THREADS)],
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        end = time.time() + 120
        while time.time() < end:
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            pytest.fail("server did not start")
        body = user("Write a very long story.", principle="Be dramatic.", max_tokens=3500, ignore_eos=True,
                    stream=True, temperature=0.7)
        started, ended = threading.Event(), threading.Event()

        def read():
            try:
                with httpx.stream("POST", base + CHAT, json=body, timeout=60) as s:
                    for n, _ in enumerate(s.iter_lines()):
                        if n >= 6:
                            started.set()
            except httpx.TransportError:
                pass
            ended.set()

        def wait():
            try:
                httpx.post(base + CHAT, json={**body, "stream": False, "principle": None}, timeout=60)
            except httpx.TransportError:
                pass

        threading.Thread(target=read, daemon=True).start()
        threading.Thread(target=wait, daemon=True).start()
        assert started.wait(60)
        end = time.time() + 30
        while httpx.get(base + "/health", timeout=5).json()["active"] < 2 and time.time() < end:
            time.sleep(0.05)
        t0 = time.perf_counter()
        proc.send_signal(sig)
        proc.wait(timeout=30)
        took = time.perf_counter() - t0
        print(f"exit {took:.2f} s after {sig.name} with a stream and a request open")
        assert ended.wait(5)
        assert took < 15 and proc.returncode == 0
        log.seek(0)
        output = log.read()
        assert "Traceback" not in output and "Error" not in output and "warning" not in output.lower(), output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.seek(0)
        print(log.read()[-3000:])
        log.close()


def test_stop_waits_for_the_worker_threads(model_path):
    # A worker still inside Aligner.submit (slowed down here) when stop() starts: stop() returns only
    # after it, so nothing calls into the aligner once its owner may close it.
    la = Aligner.load(model_path, n_ctx=1024, max_requests=2, n_threads=THREADS)
    http = BackgroundServer(Server(la, model_name="smollm2"), grace_s=0.5)
    order, inside = [], threading.Event()
    real_submit = la.submit

    def slow_submit(*args, **kw):
        request = real_submit(*args, **kw)
        if kw["params"].max_tokens == 3:
            inside.set()
            time.sleep(1.5)
            order.append("submit returned")
        return request

    la.submit = slow_submit
    streaming = threading.Event()

    def stream():
        body = user("Write a long story.", max_tokens=400, ignore_eos=True, stream=True, temperature=0.7)
        try:
            with httpx.stream("POST", http.base_url + CHAT, json=body, timeout=60) as s:
                for n, _ in enumerate(s.iter_lines()):
                    if n >= 4:
                        streaming.set()
        except httpx.TransportError:
            pass

    def post_slowly():
        try:
            httpx.post(http.base_url + CHAT, json=user("Say hi.", max_tokens=3), timeout=60)
        except httpx.TransportError:
            pass

    clients = [threading.Thread(target=stream), threading.Thread(target=post_slowly)]
    try:
        clients[0].start()
        assert streaming.wait(60)
        clients[1].start()
        assert inside.wait(30)
        assert http.stop() is True
        order.append("stopped")
        assert order == ["submit returned", "stopped"]
    finally:
        la.close()
        for t in clients:
            t.join(60)


# ---- the cancellation race, through HTTP --------------------------------------------------------
WORDS = ("the cat sat on a mat and we saw it run to the old red barn near big green hill "
         "where many birds sing each day in warm sun").split()


def test_cancellation_race_with_a_long_prefill(model_path):
    la = Aligner.load(model_path, n_ctx=4096, max_requests=3, max_queue=8, n_threads=THREADS)
    http = BackgroundServer(Server(la, model_name="smollm2"))
    base = http.base_url
    rnd = random.Random(7)
    long_prompt = " ".join(rnd.choice(WORDS) for _ in range(1500)) + "\n\nSummarise the text above."
    go_away, codes = threading.Event(), {}
    seen = [threading.Event(), threading.Event()]

    def streamer(i, principle):
        body = user("Write a long story.", max_tokens=400, ignore_eos=True, stream=True, temperature=0.7)
        if principle:
            body["principle"] = principle
        with httpx.stream("POST", base + CHAT, json=body, timeout=60) as s:
            codes[f"stream{i}"] = s.status_code
            for n, _ in enumerate(s.iter_lines()):
                if n >= 4:
                    seen[i].set()
                    go_away.wait(60)
                    return

    def call(name, body):
        codes[name] = httpx.post(base + CHAT, json=body, timeout=120).status_code

    try:
        threads = [threading.Thread(target=streamer, args=(0, "Be dramatic.")),
                   threading.Thread(target=streamer, args=(1, None))]
        for t in threads:
            t.start()
        assert all(e.wait(60) for e in seen)
        long = threading.Thread(target=call, args=("long", user(long_prompt, max_tokens=8)))
        long.start()
        end = time.time() + 30
        while la.status()["active"] < 3 and time.time() < end:
            time.sleep(0.005)
        time.sleep(0.05)  # well inside the ~1,500-token prefill
        go_away.set()  # both streaming clients disconnect
        later = [threading.Thread(target=call, args=(f"later{i}", user(f"Say {i}.", principle=p, max_tokens=6)))
                 for i, p in enumerate(["Be brief.", None, "Answer in French.", None])]
        for t in later:
            t.start()
        for t in threads + [long] + later:
            t.join(120)
        assert codes == {**{k: 200 for k in codes}}, codes
        assert len(codes) == 7, codes
        assert wait_idle(la, timeout=10)
        assert la.engine.leaked_sequences() == []
        assert httpx.post(base + CHAT, json=user("hi"), timeout=60).status_code == 200
    finally:
        http.stop()
        la.close()
