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
             "comm_wait_s", "bytes_per_step", "ratio_to_local"}
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
    """``bench_gossip.py`` on an MLP in one process, one repetition, one thread: its output and rows."""
    out = tmp_path / "steps.json"
    output = run_script("bench_gossip.py", ["--models", "mlp", "--processes", "1", "--repeats", "1", "--threads", "1",
                                            *args, "--json", str(out)])
    return output, json.loads(out.read_text())


def test_step_benchmark_writes_rows(tmp_path: Path):
    output, rows = run_mlp_bench(tmp_path, ["--mlp", "32,16,4", "--mlp-batch", "8", "--algorithms", "local,dpsgd",
                                            "--warmup", "1", "--steps", "2", "--scale-to", "8"])
    assert [(r["algorithm"], r["processes"], r["workers"]) for r in rows] == [
        ("local", 1, 4), ("dpsgd", 1, 4), ("local", 1, 8), ("dpsgd", 1, 8)]  # then the scaling rows
    for row in rows:
        assert STEP_KEYS <= set(row)
        assert_finite_non_negative(row, ["iterations", "workers", "step_s", "compute_s", "comm_wait_s",
                                         "bytes_per_step", "ratio_to_local"])
        assert math.isfinite(row["codec_s"])  # the rest of the step: a difference of timings
        [repetition] = row["repetitions"]  # --repeats 1: the median is that repetition
        assert all(repetition[key] == row[key] for key in ("step_s", "compute_s", "comm_wait_s", "comm_wait_least_s"))
    assert rows[0]["bytes_per_step"] == 0 and rows[1]["bytes_per_step"] > 0
    assert [r["run_workers"] for r in rows] == [4, 4, 8, 8] and rows[2]["ratio_to_local"] == 1  # own reference
    assert any(line.startswith("|") and "dpsgd" in line for line in output.splitlines())  # the table
    assert any("mlp dpsgd: step per worker at n=8 ≤ 1.1× n=4 (P=1)" in line for line in output.splitlines())


def test_unknown_algorithm_is_one_line_and_skipped(tmp_path: Path):
    output, rows = run_mlp_bench(tmp_path, ["--mlp", "8,4", "--mlp-batch", "4", "--algorithms", "local,nosuch",
                                            "--warmup", "0", "--steps", "1", "--scale-to", "0"])
    assert [line for line in output.splitlines() if "nosuch" in line and "skipping" in line]
    assert [r["algorithm"] for r in rows] == ["local"]


def test_codec_benchmark_writes_rows(tmp_path: Path):
    out = tmp_path / "codecs.json"
    run_script("bench_codecs.py", ["--sizes", "1000", "--repeats", "1", "--min-time", "0.001", "--threads", "1",
                                   "--json", str(out)])
    rows = json.loads(out.read_text())
    assert {r["codec"] for r in rows} == {"identity", "topk 1%", "randomk 1%", "sign", "qsgd s=7", "moniqua 2-bit"}
    for row in rows:
        assert CODEC_KEYS <= set(row)
        assert_finite_non_negative(row, ["elements", "copy_s", "encode_s", "decode_s", "ratio_to_copy", "wire_bytes"])


def test_sweep_benchmark_writes_a_row(tmp_path: Path):
    out = tmp_path / "sweep.json"
    output = run_script("bench_sweep.py", ["--model", "mlp", "--mlp", "64,96,4", "--workers", "3", "--rounds", "2",
                                           "--repeats", "2", "--json", str(out)])
    [row] = json.loads(out.read_text())
    assert {"model", "workers", "rounds", "kernel_s", "torch_s", "ratio", "kernel_available"} <= set(row)
    assert (row["model"], row["workers"], row["rounds"]) == ("mlp", 3, 2)
    assert_finite_non_negative(row, ["kernel_s", "torch_s", "ratio"])
    assert any(line.startswith("|") and "mlp" in line for line in output.splitlines())  # the table
    assert " cores" in output.splitlines()[-1]  # the machine the timings came from


def load_bench_gossip(monkeypatch: pytest.MonkeyPatch):
    spec = importlib.util.spec_from_file_location("bench_gossip", ROOT / "scripts" / "bench_gossip.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_gossip", bench)  # its dataclasses look their module up
    spec.loader.exec_module(bench)
    return bench


def test_targets_pair_the_repetitions_of_one_job(monkeypatch: pytest.MonkeyPatch):
    bench = load_bench_gossip(monkeypatch)

    def row(algorithm: str, workers: int, steps: list[float], computes: list[float]) -> dict:
        repetitions = [{"step_s": step, "compute_s": compute, "codec_s": 0.0, "comm_wait_s": None,
                        "comm_wait_least_s": None, "bytes_per_step": 0.0} for step, compute in zip(steps, computes)]
        return {"model": "mlp", "algorithm": algorithm, "processes": 1, "run_workers": workers,
                "workers_per_process": workers, "repetitions": repetitions}

    # Per worker, PowerGossip's steps are 1, 3, 4 and DDP's 1, 4, 2 in the same repetitions: the ratios
    # 1, 0.75, 2 have the median 1 (met), where the medians' ratio would be 3 / 2 (missed).
    rows = [row("powergossip-1", 4, [4.0, 12.0, 16.0], [2.0, 6.0, 8.0]),
            row("ddp-powersgd", 1, [1.0, 4.0, 2.0], [1.0, 2.0, 2.0])]
    lines = {line[0]: line[1:] for line in bench.target_lines(rows)}
    versus = "mlp P=1: PowerGossip s=1 step per worker ≤ DDP+powerSGD step"
    assert lines[versus] == ["1.00×", "0.75×–2.00×", "met"]
    # Over their own forward/backward: 2 / 1, 2 / 2, 2 / 1.
    over_compute = "mlp P=1: the same, each step over its own forward/backward"
    assert lines[over_compute] == ["2.00×", "1.00×–2.00×", "missed"]
    assert lines["mlp powergossip-1: comm wait ≤ 5 % of the step (P=2)"] == ["—", "—", "pending"]


def test_cpu_description_names_the_model_cores_and_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    bench = load_bench_gossip(monkeypatch)
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
