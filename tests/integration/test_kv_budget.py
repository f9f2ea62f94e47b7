"""The KV budget on the real model: a real `la-edge serve` process held to a small budget, a
quantized cache that loads, generates and keeps its prompt cache exact, and the CLI's errors."""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from la_edge import Aligner, GenerationParams, MemoryBudgetError
from la_edge.runtime.memory import kv_bytes

MiB = 1024 ** 2
BUDGET = 100 * MiB  # SmolLM2 (22.5 KiB per cell): one request of 2 branches x 2048 tokens = 90 MiB
# Beyond the model file and the KV cache: Python with FastAPI/uvicorn and llama.cpp's compute buffer
# (about 100 MiB at n_batch 512); measured 280 MiB peak in all with this budget, 1.6 GiB without one.
OVERHEAD = 250 * MiB
GREEDY = GenerationParams(temperature=0.0, ratio=2.0, max_tokens=24)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


@pytest.fixture(scope="module")
def server(model_path):
    port = _port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "la_edge", "serve", "--model", model_path, "--port", str(port),
                             "--kv-budget", "100MiB", "--max-queue", "1", "--no-web", "--threads", "2"],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        startup = proc.stderr.readline()
        threading.Thread(target=proc.stderr.read, daemon=True).start()  # drained: a full pipe would block it
        ready = proc.stdout.readline()
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        assert "1 request x 2 branches x 2048 tokens" in ready
        for _ in range(300):
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield proc, base, startup
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _chat(base, max_tokens, out, i, gate):
    gate.wait()
    r = httpx.post(base + "/v1/chat/completions", timeout=600, json={
        "model": "x", "messages": [{"role": "user", "content": f"Tell me a story about {i}."}],
        "principle": "Be kind.", "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0})
    out[i] = r


def test_a_small_budget_bounds_the_server(server, model_path):
    proc, base, startup = server
    assert ("KV cache f16, 22.5 KiB per cell: 1 request x 2 branches x 2048 tokens = 4,096 cells, 90 MiB "
            "(budget 100 MiB)") in startup
    kv = httpx.get(base + "/health").json()["kv"]
    assert kv["cells"] == 4096 and kv["cells_free"] == 4096 and kv["sequences"] == 2

    # One runs, one waits in the queue (max 1), the third gets 429 with Retry-After.
    out, gate = {}, threading.Barrier(3)
    threads = [threading.Thread(target=_chat, args=(base, 24, out, i, gate)) for i in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    running = httpx.get(base + "/health").json()["kv"]
    for t in threads:
        t.join()
    codes = sorted(r.status_code for r in out.values())
    assert codes == [200, 200, 429], [r.text for r in out.values()]
    busy = next(r for r in out.values() if r.status_code == 429)
    assert busy.headers["Retry-After"] and busy.json()["error"]["code"] == "busy"
    assert 0 < running["cells_in_use"] <= running["cells"] and running["sequences_free"] == 0
    assert all(r.json()["usage"]["completion_tokens"] == 24 for r in out.values() if r.status_code == 200)

    # One that could never fit a sequence's context: 400 naming the field to change.
    r = httpx.post(base + "/v1/chat/completions", timeout=60, json={
        "model": "x", "messages": [{"role": "user", "content": "Hi"}], "principle": "Be kind.", "max_tokens": 4000})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    assert "lower max_tokens" in r.json()["error"]["message"]

    peak = _peak_rss(proc.pid)
    assert peak < os.path.getsize(model_path) + BUDGET + OVERHEAD, peak / MiB


@pytest.mark.parametrize("kv_type", ["q8_0", "q4_0"])
def test_a_quantized_cache_loads_generates_and_its_prompt_cache_stays_exact(model_path, kv_type):
    with Aligner.load(model_path, n_ctx=512, kv_type=kv_type, prompt_cache=False) as cold:
        assert cold.backend.flash_attn  # a quantized V cache needs flash attention: turned on
        want = cold.generate("Name three colours.", "Be concise and friendly.", GREEDY)
    with Aligner.load(model_path, n_ctx=512, kv_type=kv_type) as la:
        assert la.memory.kv_type == kv_type
        assert la.memory.bytes == kv_bytes(la.backend.kv_shape, kv_type, 4, 512)
        first = la.generate("Name three colours.", "Be concise and friendly.", GREEDY)
        again = la.generate("Name three colours.", "Be concise and friendly.", GREEDY)
    assert first.tokens and first.text.strip()
    assert first.tokens == want.tokens == again.tokens  # warm = cold on the quantized cache
    assert again.usage["cached_tokens"] > 0 and again.usage["plain_cached_tokens"] > 0


def test_q8_0_stays_close_to_f16(model_path):
    # benchmarks/kv_divergence.py measures where aligned greedy tokens first part (README, "Memory").
    p = GREEDY.with_(max_tokens=8, ignore_eos=True)
    with Aligner.load(model_path, n_ctx=512) as f16, Aligner.load(model_path, n_ctx=512, kv_type="q8_0") as q8:
        a = f16.generate("What is a prime number?", "Answer like a pirate, in one short paragraph.", p).tokens
        b = q8.generate("What is a prime number?", "Answer like a pirate, in one short paragraph.", p).tokens
    assert len(a) == len(b) == 8 and a[:2] == b[:2]  # measured here: they part at token 6 of this prompt


def test_the_budget_through_the_api(model_path):
    with Aligner.load(model_path, n_ctx=2048, max_requests=8, kv_budget="100MiB") as la:
        m = la.memory
        assert (m.max_requests, m.max_branches, m.n_ctx, m.budget) == (1, 2, 2048, BUDGET)
        assert la.backend.n_seq_max == 2 and la.engine.max_branches == 2
    with pytest.warns(RuntimeWarning, match="the explicit values win"):
        with Aligner.load(model_path, n_ctx=256, max_requests=2, kv_budget="10MiB", fixed=("max_requests",
                                                                                            "n_ctx")) as la:
            assert la.backend.n_seq_max == 4  # explicit values win: 2 requests x 2 branches, over 10 MiB
    with pytest.raises(MemoryBudgetError, match="raise --kv-budget to 11.2 MiB"):
        Aligner.load(model_path, kv_budget="1MiB")


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "la_edge", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_cli_errors_and_doctor(model_path):
    r = _cli("generate", "Hi", "--principle", "Be brief.", "--model", model_path, "--kv-budget", "1MiB")
    assert r.returncode == 2 and "cannot hold one request of 2 branches at n_ctx=256" in r.stderr
    r = _cli("generate", "Hi", "--model", model_path, "--kv-budget", "plenty")
    assert r.returncode == 2 and "--kv-budget: 'plenty' is not a size" in r.stderr
    r = _cli("generate", "Hi", "--model", model_path, "--kv-type", "q5_1")
    assert r.returncode == 2 and "invalid choice" in r.stderr
    r = _cli("doctor", "--model", model_path, "--json", env={"LA_EDGE_MEM_AVAILABLE": "1GiB"})
    mem = json.loads(r.stdout)["memory"]
    assert mem["kv_bytes_per_cell"] == 23040 and mem["kv_bytes_per_cell_by_type"]["q8_0"] == 12240
    assert mem["serve_defaults"]["kv_bytes"] == 32 * 2048 * 23040
    assert mem["auto_budget_bytes"] == 256 * MiB  # 25% of the (faked) 1 GiB available
    assert (mem["auto"]["max_requests"], mem["auto"]["max_branches"], mem["auto"]["n_ctx"]) == (1, 4, 2048)


def test_bench_memory_measures_each_configuration_in_a_fresh_process(model_path):
    r = _cli("bench", "--memory", "--quick", "--tokens", "4", "--json", "--model", model_path, "--threads", "2")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["rows"]
    assert [(x["kv_type"], x["requests"]) for x in rows] == [("f16", 1), ("f16", 4), ("q8_0", 1), ("q8_0", 4)]
    for x in rows:
        assert x["peak_rss_bytes"] >= x["rss_loaded_bytes"] > x["kv_bytes"] > 0
        assert x["tokens"] == 4 * x["requests"] and x["tokens_per_s"] > 0
    f16, q8 = rows[1], rows[3]
    assert q8["kv_bytes"] * 64 // 34 == f16["kv_bytes"] and q8["flash_attn"]
    assert q8["peak_rss_bytes"] < f16["peak_rss_bytes"]
