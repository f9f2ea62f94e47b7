"""A tiny `la-edge eval` on the embedded model: principle mode and --mc, with their output files."""

import argparse
import importlib.util
import json

from la_edge.faces.evaluation.cli import add_eval_parser

HAS_PLOT = importlib.util.find_spec("matplotlib") is not None


def _run(argv, capsys):
    parser = argparse.ArgumentParser(prog="la-edge")
    add_eval_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["eval"] + argv)
    assert args.func(args) == 0
    return capsys.readouterr()


def _check_files(out):
    doc = json.loads((out / "results.json").read_text())
    assert (out / "results.md").read_text().startswith("## ")
    assert (out / "plot.png").is_file() == HAS_PLOT
    return doc


def test_eval_principles(model_path, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--model", model_path, "--principles", "concise,lowercase", "--limit", "2", "--max-tokens", "16",
            "--ratios", "2", "--json", "--out", str(out), "--threads", "1"]
    captured = _run(argv, capsys)
    doc = json.loads(captured.out)
    assert doc["settings"] == ["plain", "r=0", "r=2"]
    assert set(doc["results"]) == {"concise", "lowercase"}
    for by_setting in doc["results"].values():
        for s in ("plain", "r=0", "r=2"):
            row = by_setting[s]
            assert row["n"] == 2 and 0.0 <= row["adherence"] <= 1.0
            assert 0.0 <= row["distinct_2"] <= 1.0 and 0.0 <= row["rep_4"] <= 1.0
    assert len(doc["samples"]) == 12 and all(s["text"] for s in doc["samples"])
    assert "] 12/12" in captured.err
    assert _check_files(out)["results"] == doc["results"]
    again = json.loads(_run(argv[:2] + ["--principles", "concise", "--limit", "1", "--max-tokens", "16",
                                        "--ratios", "2", "--json", "--quiet", "--threads", "1"], capsys).out)
    assert [s["text"] for s in again["samples"]] == [s["text"] for s in doc["samples"][:3]]


def test_eval_mc(model_path, tmp_path, capsys):
    out = tmp_path / "mc"
    argv = ["--model", model_path, "--mc", "--limit", "2", "--ratios", "2", "--quiet", "--out", str(out),
            "--threads", "1"]
    captured = _run(argv, capsys)
    assert "| r=2 |" in captured.out and captured.err == ""
    doc = _check_files(out)
    assert doc["mode"] == "mc" and set(doc["results"]) == {"plain", "r=0", "r=2"}
    for row in doc["results"].values():
        assert row["n"] == 2 and 0.0 <= row["accuracy"] <= 1.0 and 0.0 <= row["letter_mass"] <= 1.0
    assert all(s["choice"] in (None, "A", "B", "C", "D") for s in doc["samples"])


def test_eval_compose(model_path, tmp_path, capsys):
    out = tmp_path / "compose"
    argv = ["--model", model_path, "--compose", "--limit", "1", "--max-tokens", "8", "--quiet", "--json",
            "--out", str(out), "--threads", "1"]
    doc = json.loads(_run(argv, capsys).out)
    assert doc["mode"] == "compose" and _check_files(out)["results"] == doc["results"]
    assert doc["settings"] == ["plain", "joined r=0", "joined r=2", "composed r=2", "composed r=2 undivided",
                               "composed r=2 adaptive"]
    assert doc["avoid_settings"] == ["plain", "say r=0", "say r=2", "avoid s=2", "negative g=3"]
    # One branch per part plus the plain one when composed; joined is one principle (K = 2, or 1 at r = 0).
    for row in doc["samples"]:
        n_parts = len(row["passed"])
        want = {"plain": 1, "joined r=0": 1, "joined r=2": 2}.get(row["setting"], n_parts + 1)
        assert row["branches"] == want, row
        assert (row["ratio_scale"] != 1.0) == row["setting"].endswith("adaptive"), row
    assert [r["branches"] for r in doc["avoid_samples"]] == [1, 1, 2, 3, 2]  # negative: the avoid text and plain
    undivided = [r for r in doc["samples"] if r["setting"] == "composed r=2 undivided"]
    assert all(r["prompt_tokens"] > 0 for r in undivided)
    assert set(doc["results"]["parts"]) == {"fr+concise: language_fr", "fr+concise: concise",
                                            "bullets+no_very: bullets", "bullets+no_very: no_very",
                                            "child+concise+because: child", "child+concise+because: concise",
                                            "child+concise+because: because"}
    assert doc["results"]["n"] == 3 and doc["avoid"]["n"] == 1
    for s in doc["settings"]:
        cells = [by[s] for by in doc["results"]["parts"].values()]
        assert abs(doc["results"]["mean"][s] - sum(cells) / len(cells)) < 1e-3
    md = (out / "results.md").read_text()
    assert "| composed r=2 adaptive |" in md and "forbidden words per answer" in md


def test_eval_turns(model_path, tmp_path, capsys):
    out = tmp_path / "turns"
    argv = ["--model", model_path, "--turns", "--limit", "1", "--max-tokens", "6", "--quiet", "--json",
            "--out", str(out), "--threads", "1"]
    doc = json.loads(_run(argv, capsys).out)
    assert doc["mode"] == "turns" and _check_files(out)["results"] == doc["results"]
    assert doc["settings"] == ["none", "system", "system as principle r=2"] and doc["turns"] == 8
    assert len(doc["samples"]) == 3 * 1 * 3 * 8
    for ins in doc["instructions"]:
        for s in doc["settings"]:
            chain = [x for x in doc["samples"] if x["instruction"] == ins and x["setting"] == s]
            assert [x["turn"] for x in chain] == list(range(1, 9))
            # The model's answers stay in the history: each turn's prompt is longer, and the
            # prompt cache serves the conversation so far.
            assert all(b["prompt_tokens"] > a["prompt_tokens"] for a, b in zip(chain, chain[1:]))
            assert all(x["cached_tokens"] > 0 for x in chain[1:])
            assert {x["branches"] for x in chain} == ({2} if s.startswith("system as") else {1})
        first = {s: next(x for x in doc["samples"] if x["instruction"] == ins and x["setting"] == s and x["turn"] == 1)
                 for s in doc["settings"]}
        # SmolLM2's default system text gives way to the instruction, or takes it after a separator.
        assert first["system"]["prompt_tokens"] != first["none"]["prompt_tokens"]
        assert first["system as principle r=2"]["prompt_tokens"] > first["none"]["prompt_tokens"]
    assert set(doc["results"]) == {"french", "question", "concise", "all"}
    assert "| turn 1 | turn 4 | turn 8 |" in (out / "results.md").read_text()


def test_eval_mc_adaptive_runs_the_adaptive_rule(model_path, capsys):
    argv = ["--model", model_path, "--mc", "--limit", "1", "--ratios", "2", "--adaptive-ratio", "--quiet", "--json",
            "--threads", "1"]
    doc = json.loads(_run(argv, capsys).out)
    assert doc["settings"] == ["plain", "r=0", "r=2", "r=2 adaptive"]
    by = {s["setting"]: s["scores"] for s in doc["samples"]}
    # The adaptive ratio scales r by the step's JSD (< 1), so the letter probabilities move.
    assert by["r=2 adaptive"] != by["r=2"]
