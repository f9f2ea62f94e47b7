"""`la-edge bench` and benchmarks/device.sh: the GPU script's CPU run end to end, and the shared tables."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from la_edge.faces.tables import markdown_table

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEVICE_JSON = ("doctor", "bench", "profile", "scaling", "gpu_check", "device")


@pytest.fixture(scope="module")
def device_run(tmp_path_factory):
    """benchmarks/device.sh --cpu once: its JSON files by name (about 30 s here)."""
    tmp = tmp_path_factory.mktemp("device")
    env = dict(os.environ, OUT=str(tmp / "out"), LA_EDGE_DEVICE_DIR=str(tmp / "work"), PYTHON=sys.executable)
    r = subprocess.run([str(ROOT / "benchmarks" / "device.sh"), "--cpu"], env=env, capture_output=True,
                       text=True, timeout=300)
    log = (tmp / "out" / "device.log").read_text() if (tmp / "out" / "device.log").exists() else r.stderr
    assert r.returncode == 0, log
    return {name: json.loads((tmp / "out" / f"{name}.json").read_text()) for name in DEVICE_JSON}


def test_device_script_runs_every_step_on_cpu(device_run):
    summary = device_run["device"]
    assert summary["mode"] == "cpu" and summary["n_gpu_layers"] == 0 and summary["ok"]
    assert set(summary["steps"]) == {"doctor", "bench", "profile", "scaling", "gpu_check"}
    assert device_run["doctor"]["sampler"] in ("native", "numpy")
    assert device_run["gpu_check"]["all_identical"] is True
    assert set(device_run["scaling"]["llama_decode_ms"]) == {"1", "2", "4", "8", "16"}


def test_bench_reports_aligned_over_plain_for_k_2_3_4(device_run):
    bench = device_run["bench"]
    assert bench["branches"] == {"plain": 1, "naive": 2, "aligned": 2, "aligned_k3": 3, "aligned_k4": 4,
                                 "cap_k2": 2, "cap_k3": 3, "cap_k4": 4}
    for key in ("aligned_vs_plain", "aligned_k3_vs_plain", "aligned_k4_vs_plain", "aligned_vs_naive",
                "cap_k2_vs_plain", "aligned_vs_cap", "aligned_k3_vs_cap", "aligned_k4_vs_cap"):
        assert bench["ratios"][key] > 0, key
    assert bench["n_gpu_layers"] == 0 and bench["notes"] == []


def test_profile_splits_each_step_into_decode_and_host_time(device_run):
    prof = device_run["profile"]
    assert set(prof["branches"]) == {"1", "2", "3"} and prof["target_outside_decode_ms"] == 0.15
    for k, v in prof["branches"].items():
        # 2 prompts x 5 tokens after the first: one decode call per token, one token per call
        assert v["steps"] == v["tokens"] == 10, k
        assert v["decode_ms"] > 0 and v["sampler_ms"] > 0 and v["other_host_ms"] >= 0
        assert v["outside_decode_ms"] == pytest.approx(v["sampler_ms"] + v["other_host_ms"])
        assert 0 < v["outside_share"] < 1


def test_bench_profile_prints_a_table_and_skips_k_above_max_branches():
    r = subprocess.run([sys.executable, "-m", "la_edge", "bench", "--profile", "--quick", "--tokens", "3",
                        "--repetitions", "1", "--threads", "1", "--max-branches", "2"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| K | request | decode steps | decode ms/step") and len(rows) == 3  # K = 1, 2
    assert "note: K = 3 skipped: the engine was loaded with max_branches=2" in r.stdout


def test_bench_modes_exclude_each_other():
    r = subprocess.run([sys.executable, "-m", "la_edge", "bench", "--profile", "--scaling"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "not allowed with argument" in r.stderr


def test_markdown_table_aligns_columns_and_checks_rows():
    assert markdown_table(["a", "b"], [[1, "x"]], "rl") == "| a | b |\n|---:|---|\n| 1 | x |"
    assert markdown_table(["a"], []) == "| a |\n|---|"
    with pytest.raises(ValueError, match="2 cells for 1 columns"):
        markdown_table(["a"], [[1, 2]])
    with pytest.raises(ValueError, match="align"):
        markdown_table(["a"], [], "c")
