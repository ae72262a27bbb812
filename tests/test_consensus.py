"""The consensus study (scripts/consensus.py): its CSV, PowerGossip against random projections on
structured data, the compressed baselines' targets, and the same numbers under torchrun."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest

from conftest import ROOT


def study(tmp_path, *args: str, torchrun: int | None = None) -> dict[str, list[dict]]:
    launcher = [sys.executable, str(ROOT / "scripts/consensus.py")]
    if torchrun:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}",
                    str(ROOT / "scripts/consensus.py")]
    out = tmp_path / f"out{torchrun or 1}"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    result = subprocess.run([*launcher, *args, "--out", str(out)], capture_output=True, text=True, timeout=240,
                            env=env)
    assert result.returncode == 0, result.stderr
    rows: dict[str, list[dict]] = {}
    with open(out / "consensus.csv") as f:
        for row in csv.DictReader(f):
            rows.setdefault(row["algorithm"], []).append({k: v if k == "algorithm" else float(v) for k, v in row.items()})
    return rows


def test_power_iteration_beats_random_projections_at_equal_bytes_on_structured_data(tmp_path):
    rows = study(tmp_path, "--data", "structured", "--steps", "200",
                 "--algorithms", "dpsgd,powergossip,powergossip-random")
    assert set(rows) == {"dpsgd", "powergossip", "powergossip-random"}
    for series in rows.values():
        assert [r["step"] for r in series] == list(range(201))
        assert series[0]["relative_error"] == 1.0 and series[0]["bytes_per_worker"] == 0
    power, random = rows["powergossip"], rows["powergossip-random"]
    assert [r["bytes_per_worker"] for r in power] == [r["bytes_per_worker"] for r in random]
    assert power[-1]["bytes_per_worker"] == 200 * 2 * 100 * 4  # one 100-float vector to each of 2 neighbours
    assert rows["dpsgd"][-1]["bytes_per_worker"] == 200 * 2 * 100 * 100 * 4
    # the paper's Figure 1 (right): on images the warm-started power iteration, which tracks the
    # differences' top singular directions, ends orders of magnitude below random projections (which
    # remove a 1/n_cols share per round, ALGORITHMS.md); one order of magnitude is asked here
    assert power[-1]["error"] < random[-1]["error"] / 10


# docs/compressed.md, "Tuned values": the relative error after 1,500 steps at the defaults (data
# seed 0). A test allows 10x that (the text notes how little seed 1 differs), or the docs' own
# target where that is tighter.
DOCUMENTED_AT_1500 = {"choco-topk": 7.7e-7, "deepsqueeze-sign": 2.9e-4, "moniqua": 4.6e-2}
TARGETS = {"moniqua": 0.1}  # "DeepSqueeze and Moniqua >= 10x below the start"


def test_choco_sign_reaches_float_round_off_within_200_steps(tmp_path):
    """docs/compressed.md: Choco sign+norm at gamma = 1 "reaches fp32 round-off in about 120 steps",
    a floor of ~1e-12 (1.1e-12 in the table): 200 steps get within 10x of it."""
    rows = study(tmp_path, "--data", "random", "--steps", "200", "--algorithms", "choco-sign")
    assert rows["choco-sign"][-1]["relative_error"] <= 10 * 1.1e-12


def test_compressed_baselines_reach_their_documented_errors_on_random_data(tmp_path):
    rows = study(tmp_path, "--data", "random", "--steps", "1500", "--algorithms", ",".join(DOCUMENTED_AT_1500))
    for label, documented in DOCUMENTED_AT_1500.items():
        bound = min(10 * documented, TARGETS.get(label, float("inf")))
        assert rows[label][-1]["relative_error"] <= bound, (label, rows[label][-1]["relative_error"], bound)


def test_gamma_override_and_the_same_numbers_under_torchrun(tmp_path):
    args = ["--data", "random", "--steps", "30", "--workers", "4", "--algorithms", "powergossip,choco-sign@0.3"]
    single, double = study(tmp_path, *args), study(tmp_path, *args, torchrun=2)
    assert set(single) == {"powergossip", "choco-sign@0.3"}
    assert set(double) == set(single)
    for label in single:
        assert [r["step"] for r in single[label]] == [r["step"] for r in double[label]] == list(range(31))
        for a, b in zip(single[label], double[label]):
            assert b["bytes_per_worker"] == a["bytes_per_worker"]
            # the same float32 operations; sums over workers per process first (~1e-7 per addition)
            assert b["error"] == pytest.approx(a["error"], rel=1e-5)
