"""scripts/plot.py draws a PNG from real runs."""

from __future__ import annotations

import subprocess
import sys

from gossip.train import main

from conftest import ROOT


def test_plot_makes_a_png_from_real_runs(tmp_path):
    runs = []
    for algorithm in ("dpsgd", "allreduce"):
        run_dir = tmp_path / algorithm
        assert main(["--config", str(ROOT / "configs/logistic.yaml"), "--run-dir", str(run_dir), "--no-progress",
                     "--set", "workers=4", "--set", "train.steps=40", "--set", "train.eval_every=10",
                     "--set", f"algorithm.name={algorithm}"]) == 0
        runs.append(str(run_dir))
    out = tmp_path / "fig.png"
    result = subprocess.run([sys.executable, str(ROOT / "scripts/plot.py"), *runs, "--out", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    data = out.read_bytes()
    # a PNG, and more than an empty canvas (a blank 640 × 480 PNG compresses to a few kB)
    assert data.startswith(b"\x89PNG") and len(data) > 10_000


def test_plot_names_a_directory_that_is_not_a_run(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts/plot.py"), str(tmp_path), "--out",
                             str(tmp_path / "f.png")], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "has no metrics.jsonl" in result.stderr and "Traceback" not in result.stderr
