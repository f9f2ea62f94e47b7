"""`la-edge eval --ifeval` end to end on the embedded model (2 prompts, short answers)."""

import importlib.util
import json

import pytest

from tests.integration.test_eval import _check_files, _run

if importlib.util.find_spec("if_verifiable") is None:
    pytest.skip("if-verifiable is not installed (scripts/install.sh --test installs it)", allow_module_level=True)


def test_eval_ifeval(model_path, tmp_path, capsys):
    out = tmp_path / "ifeval"
    argv = ["--model", model_path, "--ifeval", "--limit", "2", "--ratios", "2", "--max-tokens", "8", "--parallel", "4",
            "--quiet", "--json", "--out", str(out), "--threads", "1", "--n-ctx", "512", "--max-branches", "2"]
    doc = json.loads(_run(argv, capsys).out)
    assert doc["mode"] == "ifeval" and _check_files(out)["results"] == doc["results"]
    assert doc["settings"] == ["plain", "prompt", "r=0", "r=2", "raw r=2"]
    assert doc["n"] == 2 and len(doc["samples"]) == 10 and doc["prompts_total"] == 541
    for s in doc["settings"]:
        cell = doc["results"][s]["prompt_strict"]
        assert 0.0 <= cell["ci"][0] <= cell["value"] <= cell["ci"][1] <= 1.0
    assert "vs_prompt" in doc["results"]["r=2"] and "vs_prompt" not in doc["results"]["prompt"]
    assert all(len(x["strict"]) == len(x["instruction_id_list"]) for x in doc["samples"])
    md = (out / "results.md").read_text()
    assert "| raw r=2 |" in md and "IFEval" in md


def test_eval_forbidden_words(model_path, tmp_path, capsys):
    out = tmp_path / "avoid"
    argv = ["--model", model_path, "--forbidden-words", "--limit", "3", "--max-tokens", "8", "--parallel", "3",
            "--quiet", "--json", "--out", str(out), "--threads", "1", "--n-ctx", "512", "--max-branches", "3"]
    doc = json.loads(_run(argv, capsys).out)
    assert doc["mode"] == "avoid" and _check_files(out)["avoid"] == doc["avoid"]
    assert doc["avoid_settings"] == ["plain", "say r=0", "say r=2", "avoid s=2", "negative g=3",
                                     "negative g=3 top-p 1"]
    av = doc["avoid"]
    assert av["n"] == 3 and len(doc["samples"]) == 18 and sum(doc["sources"].values()) == 3
    for s in doc["avoid_settings"]:
        assert 0.0 <= av["rate_ci"][s][0] <= av["rate"][s] <= av["rate_ci"][s][1] <= 1.0
    assert set(av["vs_plain"]) == set(doc["avoid_settings"][1:])
    for x in doc["samples"]:  # the count is the forbidden words' whole-word occurrences
        assert x["used"] == (x["count"] > 0)
    md = (out / "results.md").read_text()
    assert "| negative g=3 |" in md and "forbidden-word rate" in md
