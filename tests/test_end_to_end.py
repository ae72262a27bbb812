"""The command line end to end: the quick start trains, and its numbers do not depend on how the
workers are placed on processes."""

from __future__ import annotations

import pytest
import yaml

from conftest import read_metrics, run_cli

SMALL = ["--set", "workers=4", "--set", "train.steps=60", "--set", "train.eval_every=10", "--no-progress"]


def test_quickstart_language_model_perplexity_falls(tmp_path, root):
    """The README's main job, shortened to 3 of its 10 epochs: perplexity falls by well over 30 %."""
    run_dir = tmp_path / "run"
    result = run_cli(["--config", str(root / "configs/quickstart.yaml"), "--run-dir", str(run_dir),
                      "--set", "train.epochs=3", "--no-progress"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = read_metrics(run_dir)
    assert records[-1]["eval_perplexity"] < 0.7 * records[0]["eval_perplexity"]
    assert records[-1]["step"] == 75


def test_synthetic_run_trains_and_writes_the_metrics(tmp_path, root):
    run_dir = tmp_path / "run"
    result = run_cli(["--config", str(root / "configs/logistic.yaml"), "--run-dir", str(run_dir), *SMALL],
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == [10, 20, 30, 40, 50, 60]
    for key in ["epoch", "lr", "train_loss", "eval_loss", "eval_accuracy", "local_eval_loss_mean",
                "local_eval_loss_std", "consensus_distance", "bytes_per_worker", "time_compute_s",
                "time_codec_s", "time_comm_s"]:
        assert key in records[-1]
    assert records[-1]["train_loss"] < 0.8 * records[0]["train_loss"]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["workers"] == 4
    assert "done: 60 steps" in result.stdout


def test_placement_does_not_change_the_numbers(tmp_path, root):
    """4 workers in 1 process and in 4 gloo processes give the same train_loss at every record."""
    config = str(root / "configs/logistic.yaml")
    single = run_cli(["--config", config, "--run-dir", str(tmp_path / "one"), *SMALL], cwd=tmp_path)
    assert single.returncode == 0, single.stderr
    multi = run_cli(["--config", config, "--run-dir", str(tmp_path / "four"), *SMALL], cwd=tmp_path,
                    torchrun=4, timeout=300)
    assert multi.returncode == 0, multi.stderr
    one, four = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "four")
    assert [r["step"] for r in one] == [r["step"] for r in four]
    for a, b in zip(one, four):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["eval_loss"] == pytest.approx(a["eval_loss"], rel=1e-5)
        assert b["bytes_per_worker"] == a["bytes_per_worker"]


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, root):
    result = run_cli(["--config", str(root / "configs/logistic.yaml"), "--dry-run"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "spectral gap" in result.stdout and "dpsgd" in result.stdout
    assert not (tmp_path / "runs").exists()


def test_an_existing_run_is_not_overwritten(tmp_path, root):
    args = ["--config", str(root / "configs/logistic.yaml"), "--set", "train.steps=2", "--no-progress"]
    assert run_cli(args, cwd=tmp_path).returncode == 0
    second = run_cli(args, cwd=tmp_path)
    assert second.returncode == 0 and "runs/logistic-2" in second.stderr
    assert (tmp_path / "runs/logistic-2/metrics.jsonl").exists()
    third = run_cli(args + ["--run-dir", str(tmp_path / "runs/logistic")], cwd=tmp_path)
    assert third.returncode == 2 and "already holds a run" in third.stderr
