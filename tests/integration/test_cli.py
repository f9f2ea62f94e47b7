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
    (("--request-timeout", "0"), "timeout"),
    (("--request-timeout", "inf"), "timeout"),
])
def test_bad_input_exits_2_with_a_message(args, needle):
    r = la_edge("generate", "hi", *args)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert needle in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("stops, needle", [
    (["x" * 513], "stop: each stop string must be at most 512 characters, got one of 513"),
    (["a"] * 17, "stop: at most 16 stop strings, got 17"),
])
def test_stop_beyond_its_limits_exits_2_with_one_line(stops, needle):
    r = la_edge("generate", "hi", *(arg for s in stops for arg in ("--stop", s)))
    assert r.returncode == 2 and r.stderr == f"la-edge: error: {needle}\n" and r.stdout == ""


def test_serve_without_the_server_extra_exits_2_with_one_line():
    # fastapi / uvicorn missing (a `pip install la-edge` without [server]): one line naming the extra
    for module in ("uvicorn", "fastapi"):
        code = (f"import sys; sys.modules[{module!r}] = None; from la_edge.faces.cli import main; "
                "sys.exit(main(['serve', '--port', '1']))")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert f"{module} is missing" in r.stderr and "pip install 'la-edge[server]'" in r.stderr


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


def test_bench_chat_json():
    r = la_edge("bench", "--chat", "--turns", "2", "--tokens", "4", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [t["turn"] for t in out["turns"]] == [1, 2]
    second = out["turns"][1]
    assert second["aligned, cache"]["cached_tokens"] > 0 and second["aligned, no cache"]["cached_tokens"] == 0
    assert set(out["last_vs_turn2"]) == {"aligned, cache", "aligned, no cache", "plain, cache", "plain, no cache"}


def test_bench_context_json():
    r = la_edge("bench", "--context", "16", "--context", "64", "--tokens", "4", "--repetitions", "1", "--json")
    assert r.returncode == 0, r.stderr
    ctx = json.loads(r.stdout)["contexts"]
    assert set(ctx) == {"16", "64"} and ctx["16"]["ratio_vs_shortest"] == 1.0
    assert all(v["aligned_vs_plain"] > 0 and v["aligned_vs_r0"] > 0 and v["aligned_vs_cap"] > 0 and v["cap_vs_plain"] > 0
               for v in ctx.values())


def test_doctor_reports_the_prompt_cache(model_path):
    r = la_edge("doctor", "--json", "--model", model_path, "--no-prompt-cache")
    assert r.returncode == 0, r.stderr
    cache = json.loads(r.stdout)["prompt_cache"]
    assert cache["enabled"] is False and cache["reuse"] == "any common token prefix"
    assert cache["reuse_block"] == 16 and cache["max_sequences"] == 4


def test_generate_without_the_prompt_cache():
    r = la_edge("generate", "Hi", "--principle", "Be brief.", "--max-tokens", "4", "--temperature", "0",
                "--no-prompt-cache")
    assert r.returncode == 0, r.stderr


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


def _options(sub):
    return {a.dest: a for a in sub._actions if a.option_strings}


def test_every_model_command_shares_the_model_flags():
    from la_edge.faces.cli import build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if a.dest == "command").choices
    model_flags = {"model", "backend", "n_ctx", "kv_unified", "n_gpu_layers", "threads", "flash_attn",
                   "numpy_sampler", "verbose", "max_branches", "kv_budget", "kv_type"}
    for name in ("generate", "chat", "serve", "bench", "eval", "doctor"):
        opts = _options(subs[name])
        assert model_flags <= set(opts), (name, model_flags - set(opts))
        assert opts["backend"].choices == ("auto", "llama.cpp", "onnx") and opts["max_branches"].default == 4
        assert opts["kv_type"].choices == ("f16", "q8_0", "q4_0") and opts["kv_type"].default == "f16"
        assert opts["kv_budget"].default == ("auto" if name == "serve" else None), name
    # serve's help states the n_ctx it really uses
    serve_ctx = _options(subs["serve"])["n_ctx"]
    assert serve_ctx.default == 2048 and "%(default)s" in serve_ctx.help
    # --request-timeout: none by default, except serve's 10 minutes for requests that bring none
    for name in ("generate", "chat", "serve", "eval"):
        flag = _options(subs[name])["timeout"]
        assert flag.option_strings == ["--request-timeout"]
        assert flag.default == (600.0 if name == "serve" else None), name


def test_doctor_reports_max_branches_and_the_kv_sequences():
    r = la_edge("doctor", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert (info["max_requests"], info["max_branches"], info["n_seq_max"]) == (1, 4, 4)
    r = la_edge("doctor", "--json", "--max-requests", "8", "--max-branches", "3")
    info = json.loads(r.stdout)
    assert (info["max_requests"], info["max_branches"], info["n_seq_max"]) == (8, 3, 24)
    text = la_edge("doctor", "--max-branches", "2").stdout
    assert "max_branches: 2" in text and "n_seq_max: 2" in text


def test_serve_and_eval_reject_a_bad_request_timeout_with_exit_2():
    for cmd in (("serve", "--port", "1"), ("eval", "--limit", "1")):
        r = la_edge(*cmd, "--request-timeout", "-5")
        assert r.returncode == 2 and "timeout" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_bench_and_eval_reject_a_bad_backend_with_exit_2():
    for cmd in (("bench", "--quick"), ("eval", "--limit", "1")):
        r = la_edge(*cmd, "--backend", "onnx", "--model", "/nonexistent/folder")
        assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr, r.stderr


# ---- several principles, things to avoid, adaptive ratio (issue 18) --------------------------------
GREEDY = ("--temperature", "0", "--max-tokens", "8", "--json")


def test_two_principles_show_three_branch_prompts_and_adaptive_ratio_scales():
    r = la_edge("generate", "Why is the sky blue?", "--principle", "Answer in French.", "--principle", "Be brief.",
                "--ratio", "2", "--ratio", "1", "--weight", "2", "--weight", "1", "--adaptive-ratio", *GREEDY)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [b["role"] for b in out["prompts"]["branches"]] == ["principled", "principled", "plain"]
    assert any(0 <= e.get("ratio_scale", 2) <= 1 for e in out["logprobs"])


def test_one_principle_is_todays_request_token_for_token(tmp_path):
    today = la_edge("generate", "Name a fruit.", "--principle", "Be brief.", "--ratio", "3", *GREEDY)
    weighted = la_edge("generate", "Name a fruit.", "--principle", "Be brief.", "--ratio", "3", "--weight", "5",
                       *GREEDY)
    f = tmp_path / "p.toml"
    f.write_text('[[principles]]\ntext = "Be brief."\nratio = 3\n')
    from_file = la_edge("generate", "Name a fruit.", "--principles-file", str(f), *GREEDY)
    outs = [json.loads(x.stdout) for x in (today, weighted, from_file)]
    assert outs[0]["tokens"] and outs[0]["tokens"] == outs[1]["tokens"] == outs[2]["tokens"]
    assert outs[0]["prompts"] == outs[2]["prompts"] and "branches" not in outs[0]["prompts"]


@pytest.mark.parametrize("args, needle", [
    (("--principle", "A.", "--principle", "B.", "--ratio", "1", "--ratio", "2", "--ratio", "3"), "--ratio"),
    (("--principle", "A.", "--principle", "B.", "--weight", "1", "--weight", "2", "--weight", "3"), "--weight"),
    (("--principle", "A.", "--weight", "0"), "weights"),
    (("--principle", "A.", "--principle", ""), "principles[1].text"),
    (("--principle", "A.", "--principle", "B.", "--ratio", "nan"), "ratio"),
    (("--principle", "A.", "--avoid", "B.", "--avoid-ratio", "1", "--avoid-ratio", "2"), "--avoid-ratio"),
    (("--avoid-ratio", "1"), "--avoid-ratio"),  # (--avoid alone is a negative prompt: test_guidance_api)
    (("--adaptive-ratio",), "--adaptive-ratio"),
    (("--principle", "A.", "--principle", "B.", "--principle", "C.", "--avoid", "D.", "--max-branches", "4"),
     "max_branches"),
])
def test_bad_principle_flags_exit_2(args, needle):
    r = la_edge("generate", "hi", "--max-tokens", "1", *args)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert needle in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("text, needle", [
    ('[[principles]]\ntext = "A."\nratoi = 2\n', "principles[0].ratoi"),
    ('[[principles]]\ntext = "A."\nweight = "x"\n', "principles[0].weight"),
    ('[[avoid]]\ntext = "B."\nratio = -1\n', "avoid[0].ratio"),  # (avoid alone is a negative prompt)
    ('principles = [\n', "not valid TOML"),
    ('principle = "A."\n', "unknown key 'principle'"),
])
def test_a_bad_principles_file_names_the_file_and_the_key(tmp_path, text, needle):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    r = la_edge("generate", "hi", "--principles-file", str(f))
    assert r.returncode == 2 and str(f) in r.stderr and needle in r.stderr and "Traceback" not in r.stderr, r.stderr
