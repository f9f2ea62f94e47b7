"""The `la-edge` command as a user runs it (a real subprocess, the embedded model)."""

import json
import subprocess
import sys

import pytest


def la_edge(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "la_edge", *args], capture_output=True, text=True, timeout=timeout)


def test_generate_json_has_the_contract_fields():
    r = la_edge("generate", "Why is the sky blue?", "--principle", "Answer in French.", "--temperature", "0",
                "--max-tokens", "16", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for key in ("text", "tokens", "prompts", "finish_reason", "usage", "timings"):
        assert key in out
    assert set(out["prompts"]) == {"principled", "plain"}
    assert "Answer in French." in out["prompts"]["principled"]
    assert "Answer in French." not in out["prompts"]["plain"]
    assert len(out["tokens"]) == out["usage"]["completion_tokens"] <= 16


def test_generate_streams_text():
    r = la_edge("generate", "Say hello.", "--principle", "Be brief.", "--temperature", "0", "--max-tokens", "8")
    assert r.returncode == 0 and r.stdout.strip()


@pytest.mark.parametrize("args, needle", [
    (("--ratio", "nan"), "ratio"),
    (("--ratio", "1e9"), "ratio"),
    (("--temperature", "-1"), "temperature"),
    (("--top-p", "0"), "top_p"),
    (("--model", "/nonexistent/model.gguf"), "not found"),
    (("--principle", ""), "principle"),
])
def test_bad_input_exits_2_with_a_message(args, needle):
    r = la_edge("generate", "hi", *args)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert needle in r.stderr and "Traceback" not in r.stderr


def test_doctor_reports_the_sampler_path():
    r = la_edge("doctor", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["sampler"] in ("native", "numpy") and "cpu_features" in info and info["default_model"]


def test_bench_quick_json():
    r = la_edge("bench", "--quick", "--json", "--tokens", "24")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["ratios"]["aligned_vs_plain"] > 0 and out["ratios"]["aligned_vs_naive"] > 0


def test_bench_sampler_json():
    r = la_edge("bench", "--sampler", "--quick", "--json")
    assert r.returncode == 0, r.stderr
    ms = json.loads(r.stdout)["sampler_ms"]
    assert set(ms) == {"49152", "151936", "262144"}
    assert set(ms["49152"]) >= {"native", "numpy"} and set(ms["49152"]["native"]) == {"greedy", "sample"}


def test_bench_scaling_json():
    r = la_edge("bench", "--scaling", "--json")
    assert r.returncode == 0, r.stderr
    ms = json.loads(r.stdout)["llama_decode_ms"]
    assert set(ms) == {"1", "2", "4", "8", "16"} and all(v > 0 for v in ms.values())
