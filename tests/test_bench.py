"""Smoke tests of the benchmarks: they run with the smallest setting and write JSON rows with the
promised keys and finite, non-negative numbers. Timings themselves are never checked."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

STEP_KEYS = {"model", "algorithm", "iterations", "workers", "processes", "step_s", "compute_s", "codec_s",
             "comm_wait_s", "bytes_per_step", "ratio_to_local", "codec_share", "repetitions"}
CODEC_KEYS = {"codec", "elements", "copy_s", "encode_s", "decode_s", "ratio_to_copy", "wire_bytes"}


def run_script(script: str, args: list[str], timeout: float = 60) -> str:
    """Run ``scripts/SCRIPT ARGS``; on a timeout the whole process group (its spawned processes
    included) is killed."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / script), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == 0, output
    return output


def assert_finite_non_negative(row: dict, keys: list[str]) -> None:
    for key in keys:
        assert isinstance(row[key], (int, float)) and math.isfinite(row[key]) and row[key] >= 0, (key, row)


def run_mlp_bench(tmp_path: Path, args: list[str]) -> tuple[str, list[dict]]:
    """``bench_gossip.py`` on a small MLP in one process, one thread: its output and rows."""
    out = tmp_path / "steps.json"
    output = run_script("bench_gossip.py", ["--models", "mlp", "--mlp", "32,16,4", "--mlp-batch", "8",
                                            "--processes", "1", "--threads", "1", *args, "--json", str(out)])
    return output, json.loads(out.read_text())


def test_step_benchmark_writes_rows_from_the_trainers_time_split(tmp_path: Path):
    output, rows = run_mlp_bench(tmp_path, ["--algorithms", "local,dpsgd", "--workers", "4,8",
                                            "--warmup", "1", "--steps", "2", "--repeats", "2"])
    assert [(r["algorithm"], r["processes"], r["workers"]) for r in rows] == [
        ("local", 1, 4), ("dpsgd", 1, 4), ("local", 1, 8), ("dpsgd", 1, 8)]
    for row in rows:
        assert STEP_KEYS <= set(row)
        assert_finite_non_negative(row, ["iterations", "workers", "step_s", "compute_s", "comm_wait_s",
                                         "bytes_per_step", "ratio_to_local"])
        assert math.isfinite(row["codec_s"]) and math.isfinite(row["codec_share"])
        assert len(row["repetitions"]) == 2
        for key in ("step_s", "compute_s", "codec_s", "comm_wait_s"):  # the median of two is their mean
            assert row[key] == pytest.approx(sum(rep[key] for rep in row["repetitions"]) / 2)
    # bytes are the network's count: D-PSGD sends the whole model (4 bytes per parameter) to 2 neighbours
    parameters = 32 * 16 + 16 + 16 * 4 + 4
    assert [r["bytes_per_step"] for r in rows] == [0, 2 * 4 * parameters, 0, 2 * 4 * parameters]
    assert [r["iterations"] for r in rows] == [0, 1, 0, 1]
    assert rows[0]["ratio_to_local"] == 1 and rows[2]["ratio_to_local"] == 1  # each n has its own reference
    assert any(line.startswith("|") and "dpsgd" in line for line in output.splitlines())  # the table
    assert " cores" in output.splitlines()[-1]  # the machine the timings came from


def test_two_processes_give_one_row_per_algorithm(tmp_path: Path):
    out = tmp_path / "steps.json"
    run_script("bench_gossip.py", ["--models", "mlp", "--mlp", "8,4", "--mlp-batch", "4", "--processes", "2",
                                   "--workers", "2", "--algorithms", "powergossip-1", "--warmup", "0", "--steps", "1",
                                   "--threads", "1", "--json", str(out)])
    [row] = json.loads(out.read_text())
    assert (row["algorithm"], row["processes"], row["workers"], row["iterations"]) == ("powergossip-1", 2, 2, 1)
    assert row["ratio_to_local"] is None and row["codec_share"] is None  # local SGD was not measured
    assert row["bytes_per_step"] > 0


def test_unknown_algorithm_is_one_line_and_skipped(tmp_path: Path):
    output, rows = run_mlp_bench(tmp_path, ["--algorithms", "local,nosuch", "--warmup", "0", "--steps", "1"])
    assert [line for line in output.splitlines() if "nosuch" in line and "skipping" in line]
    assert [r["algorithm"] for r in rows] == ["local"]


def test_unknown_model_stops_with_one_line():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_gossip.py"), "--models", "lstm,nosuch"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--models: unknown nosuch" in proc.stderr.splitlines()[-1]


def test_codec_benchmark_writes_rows(tmp_path: Path):
    out = tmp_path / "codecs.json"
    run_script("bench_codecs.py", ["--sizes", "1000", "--repeats", "1", "--min-time", "0.001", "--threads", "1",
                                   "--json", str(out)])
    rows = json.loads(out.read_text())
    assert {r["codec"] for r in rows} == {"identity", "topk 1%", "randomk 1%", "sign", "qsgd s=7", "moniqua 2-bit"}
    for row in rows:
        assert CODEC_KEYS <= set(row)
        assert_finite_non_negative(row, ["elements", "copy_s", "encode_s", "decode_s", "ratio_to_copy", "wire_bytes"])


def load_bench_common(monkeypatch: pytest.MonkeyPatch):
    spec = importlib.util.spec_from_file_location("bench_common", ROOT / "scripts" / "bench_common.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_common", module)
    spec.loader.exec_module(module)
    return module


def test_cpu_description_names_the_model_cores_and_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    bench = load_bench_common(monkeypatch)
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nmodel name\t: Test CPU 9000\n\n"
                                      "processor\t: 1\nmodel name\t: Test CPU 9000\n")
    caches = [("1", "Data", "48K"), ("1", "Instruction", "32K"), ("2", "Unified", "1280K"), ("3", "Unified", "307200K")]
    for i, entry in enumerate(caches):
        folder = tmp_path / "cache" / f"index{i}"
        folder.mkdir(parents=True)
        for name, value in zip(("level", "type", "size"), entry):
            (folder / name).write_text(value + "\n")
    cores = bench.usable_cores()
    found = bench.cpu_description(tmp_path / "cpuinfo", tmp_path / "cache")
    assert found == f"Test CPU 9000, {cores} cores, L2 1280 KiB, L3 300 MiB"
    assert bench.cpu_description(tmp_path / "absent", tmp_path / "absent") == f"{cores} cores"
