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
