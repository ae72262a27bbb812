"""python -m gossip.sweep on a tiny task: expansion, tables, resume, failures, printed commands,
tuning; and the run-length override of gossip.config."""

from __future__ import annotations

import csv
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gossip import config as cfg
from gossip.sweep import sweepfile
from gossip.config import ConfigError
from gossip.sweep.sweepfile import Row, Sweep, SweepError

from conftest import ROOT

TINY = {"train.steps": 20, "train.eval_every": 10, "workers": 4, "task.samples_per_worker": 256}
TINY_SETS = [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]


def sweep_cli(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "gossip.sweep", "--no-progress", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def read_results(out: Path) -> list[dict[str, str]]:
    with (out / "results.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def final(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])


def summary_cells(text: str, first_cells: list[str]) -> dict[str, str]:
    """The cells of the first table row whose leading cells are ``first_cells``, by column name."""
    for table in re.split(r"\n\n", text):
        lines = [line for line in table.splitlines() if line.startswith("|")]
        if not lines:
            continue
        header = [c.strip() for c in lines[0].strip("|").split("|")]
        for line in lines[2:]:
            cells = [c.strip() for c in line.strip("|").split("|")]
            if cells[: len(first_cells)] == first_cells:
                return dict(zip(header, cells))
    raise AssertionError(f"no row {first_cells} in\n{text}")


def parse_stats(cell: str) -> tuple[float, float]:
    mean, std = cell.split(" ± ")
    return float(mean), float(std)


# --- the sweep file and its expansion (no runs) ----------------------------------------------


def test_rows_grid_and_seeds_expand_into_every_combination():
    sweep = Sweep(Path("base.yaml"),
                  [Row("pg", {"algorithm.name": "powergossip"}, {"algorithm.iterations": [1, 2, 4]}),
                   Row("choco", {"algorithm.name": "choco"}, {"algorithm.codec": ["sign", "top_k"],
                                                              "algorithm.gamma": [0.1, 0.3]})],
                  grid={"optimizer.lr": [0.05, 0.1]}, seeds=[0, 1, 2], common={"train.steps": 5})
    runs = sweep.runs()
    assert len(runs) == (3 + 2 * 2) * 2 * 3
    assert sweep.swept_keys() == ["algorithm.iterations", "algorithm.codec", "algorithm.gamma", "optimizer.lr"]
    assert len({run.name for run in runs}) == len(runs)
    first = runs[0]
    assert first.name == "pg__algorithm.iterations=1__optimizer.lr=0.05__seed=0"
    assert first.overrides == ("train.steps=5", "algorithm.name=powergossip", "algorithm.iterations=1",
                               "optimizer.lr=0.05", "seed=0")
    assert {run.seed for run in runs} == {0, 1, 2}
    assert all("algorithm.iterations" not in dict(run.values) for run in runs if run.label == "choco")


def test_a_sweep_file_is_read_with_base_next_to_it(tmp_path):
    (tmp_path / "base.yaml").write_text("train: {steps: 5}\n")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"base": "base.yaml", "seeds": [3], "set": {"lr_schedule.milestones": [1, 2]},
                                    "rows": [{"label": "a", "set": {"optimizer": {"lr": [0.1, 0.2]}}}]}))
    sweep = sweepfile.load(path)
    assert sweep.base == tmp_path / "base.yaml"
    assert sweep.rows[0].swept == {"optimizer.lr": [0.1, 0.2]}
    assert sweep.common == {"lr_schedule.milestones": [1, 2]}
    assert [run.overrides[0] for run in sweep.runs()] == ["lr_schedule.milestones=[1, 2]"] * 2


@pytest.mark.parametrize("content, message", [
    ({"base": "base.yaml", "rowz": []}, "rowz: unknown key; allowed: base, set, seeds, grid, rows"),
    ({"base": "missing.yaml"}, "base: 'missing.yaml' exists neither"),
    ({"base": "base.yaml", "rows": [{"label": "a b"}]}, "rows[0].label: expected a name"),
    ({"base": "base.yaml", "rows": [{"label": "a", "sett": {}}]}, "rows[0].sett: unknown key; allowed: label, set"),
    ({"base": "base.yaml", "rows": [{"label": "a"}, {"label": "a"}]}, "the label 'a' is used twice"),
    ({"base": "base.yaml", "grid": {"optimizer.lr": 0.1}}, "grid.optimizer.lr: expected a non-empty list"),
    ({"base": "base.yaml", "seeds": [0, -1]}, "seeds: expected non-negative integers"),
    ({"base": "base.yaml", "grid": {"seed": [1, 2]}}, "seed: give the seeds in 'seeds'"),
    ({"base": "base.yaml", "grid": {"optimizer.lr": [0.1]},
      "rows": [{"label": "a", "set": {"optimizer.lr": 0.2}}]}, "rows[a].optimizer.lr: also in the grid"),
])
def test_a_bad_sweep_file_is_one_line_naming_the_key(tmp_path, content, message):
    (tmp_path / "base.yaml").write_text("train: {steps: 5}\n")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(SweepError) as error:
        sweepfile.load(path)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_command_line_grid_and_seeds_are_checked():
    assert sweepfile.parse_grid_option("optimizer.lr=0.1,1e-3, 2") == ("optimizer.lr", [0.1, 0.001, 2])
    with pytest.raises(SweepError, match="expected KEY=V1,V2"):
        sweepfile.parse_grid_option("optimizer.lr")
    with pytest.raises(SweepError, match="--seeds 'a': expected comma-separated integers"):
        sweepfile.parse_seeds("a")


def test_a_bad_command_line_exits_2_with_one_line(tmp_path):
    result = sweep_cli(["--config", str(ROOT / "configs/logistic.yaml"), "--grid", "optimizer.lr=0.1,0.2",
                        "--out", str(tmp_path / "o"), "--tune", "optimizer.momentum"], tmp_path, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--tune optimizer.momentum: not a swept key; swept: optimizer.lr" in result.stderr
    assert not (tmp_path / "o").exists()


# --- the run length from the command line ------------------------------------------------------


def test_setting_steps_replaces_the_files_epochs_and_the_other_way_round(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: {epochs: 2}\n")
    config = cfg.load(path, ["train.steps=7"])
    assert (config.train.steps, config.train.epochs) == (7, None)
    path.write_text("train: {steps: 5}\n")
    config = cfg.load(path, ["train.epochs=1.5"])
    assert (config.train.steps, config.train.epochs) == (None, 1.5)


def test_a_file_that_sets_both_lengths_is_still_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: {steps: 5, epochs: 1}\n")
    with pytest.raises(ConfigError, match="set exactly one of train.steps and train.epochs"):
        cfg.load(path, ["train.steps=7"])


# --- a real sweep: two learning rates × two seeds, and a row whose runs fail ---------------------


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One sweep, run once for the tests below: its directory, sweep file and first result."""
    work = tmp_path_factory.mktemp("sweep")
    sweep_file = work / "tiny.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "base": str(ROOT / "configs/logistic.yaml"), "set": TINY, "seeds": [0, 1],
        "rows": [{"label": "dpsgd", "set": {"optimizer.lr": [0.05, 0.2]}},
                 {"label": "broken", "set": {"optimizer.lr": -1.0}}]}))
    out = work / "out"
    result = sweep_cli(["--sweep", str(sweep_file), "--jobs", "2", "--out", str(out), "--tune", "optimizer.lr"], work)
    return out, sweep_file, result


def test_every_run_has_its_row_in_results_csv(swept):
    out, _, _ = swept
    rows = read_results(out)
    assert [(r["label"], r["optimizer.lr"], r["seed"], r["status"]) for r in rows] == [
        ("dpsgd", "0.05", "0", "done"), ("dpsgd", "0.05", "1", "done"), ("dpsgd", "0.2", "0", "done"),
        ("dpsgd", "0.2", "1", "done"), ("broken", "", "0", "failed"), ("broken", "", "1", "failed")]
    for row in rows[:4]:
        run_dir = out / "runs" / Path(row["run_dir"]).name
        last = final(run_dir)
        assert int(row["step"]) == last["step"] == 20
        assert float(row["final_eval_loss"]) == pytest.approx(last["eval_loss"])
        assert float(row["final_eval_accuracy"]) == pytest.approx(last["eval_accuracy"])
        assert float(row["final_local_eval_loss_mean"]) == pytest.approx(last["local_eval_loss_mean"])
        assert float(row["final_consensus_distance"]) == pytest.approx(last["consensus_distance"])
        assert float(row["bytes_per_worker"]) == last["bytes_per_worker"] > 0
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert float(row["best_eval_loss"]) == pytest.approx(min(r["eval_loss"] for r in records))
        assert float(row["best_eval_accuracy"]) == pytest.approx(max(r["eval_accuracy"] for r in records))
        assert float(row["wall_s"]) > 0 and (run_dir / "train.log").is_file()


def test_a_failing_run_is_listed_and_does_not_stop_the_others(swept):
    out, _, result = swept
    assert result.returncode == 1
    failed = [r for r in read_results(out) if r["status"] == "failed"]
    assert len(failed) == 2
    for row in failed:
        assert row["error"] == "exit 2: error: optimizer.lr: -1.0 is out of range; allowed: > 0"
        assert f"failed: {row['run_dir']}: {row['error']}" in result.stderr
    assert "broken__seed=0` (failed): exit 2: error: optimizer.lr" in (out / "summary.md").read_text()


def test_summary_holds_mean_and_std_over_seeds(swept):
    out, _, _ = swept
    summary = (out / "summary.md").read_text()
    for lr in ("0.05", "0.2"):
        lasts = [final(out / "runs" / f"dpsgd__optimizer.lr={lr}__seed={s}") for s in (0, 1)]
        cells = summary_cells(summary, ["dpsgd", lr])
        assert cells["seeds"] == "2/2"
        for column, key in [("final_eval_loss", "eval_loss"), ("final_eval_accuracy", "eval_accuracy"),
                            ("final_local_eval_loss_mean", "local_eval_loss_mean")]:
            values = [r[key] for r in lasts]
            mean, std = parse_stats(cells[column])
            assert mean == pytest.approx(statistics.mean(values), rel=1e-3)
            assert std == pytest.approx(statistics.stdev(values), rel=0.05, abs=1e-6)
    assert summary_cells(summary, ["broken", ""])["seeds"] == "0/2"


def test_tune_picks_the_value_with_the_best_mean(swept):
    out, _, _ = swept
    means = {lr: statistics.mean(final(out / "runs" / f"dpsgd__optimizer.lr={lr}__seed={s}")["eval_loss"]
                                 for s in (0, 1)) for lr in ("0.05", "0.2")}
    best = min(means, key=means.get)
    tuned = (out / "summary.md").read_text().split("## Tuned: optimizer.lr by final_eval_loss (lower is better)")[1]
    cells = summary_cells(tuned, ["dpsgd"])
    assert cells["optimizer.lr"] == best and cells["tried"] == "0.05, 0.2"
    assert parse_stats(cells["final_eval_loss"])[0] == pytest.approx(means[best], rel=1e-3)


def test_a_second_invocation_skips_the_finished_runs(swept):
    out, sweep_file, _ = swept
    done = sorted((out / "runs").glob("dpsgd__*/metrics.jsonl"))
    stamps = {path: path.stat().st_mtime_ns for path in done}
    logs = {path: (path.parent / "train.log").read_text() for path in done}
    result = sweep_cli(["--sweep", str(sweep_file), "--jobs", "2", "--out", str(out)], out.parent)
    assert result.returncode == 1  # the broken row ran again and failed again
    assert "sweep: 6 runs, 4 already done, 2 to run" in result.stderr
    assert len(done) == 4 and all(path.stat().st_mtime_ns == stamps[path] for path in done)
    assert all((path.parent / "train.log").read_text() == logs[path] for path in done)
    assert [r["status"] for r in read_results(out)].count("done") == 4


def test_plot_draws_a_sweep_with_bands(swept, tmp_path):
    out, _, _ = swept
    figure = tmp_path / "sweep.png"
    result = subprocess.run([sys.executable, str(ROOT / "scripts/plot.py"), "--sweep", str(out), "--out", str(figure),
                             "--x", "bytes_per_worker"], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, result.stderr
    assert figure.read_bytes().startswith(b"\x89PNG")


# --- resuming a run from its checkpoint, and printed commands -----------------------------------


def test_a_longer_run_continues_from_its_checkpoint(tmp_path):
    out = tmp_path / "out"
    args = ["--config", str(ROOT / "configs/logistic.yaml"), *TINY_SETS, "--out", str(out)]
    assert sweep_cli([*args, "--set", "train.steps=10"], tmp_path).returncode == 0
    result = sweep_cli([*args, "--set", "train.epochs=5"], tmp_path)  # other unit: started over
    assert result.returncode == 0, result.stderr
    run_dir = out / "runs" / "logistic__seed=0"
    assert "resuming" not in (run_dir / "train.log").read_text() and final(run_dir)["step"] == 40
    assert sweep_cli([*args, "--set", "train.epochs=7.5"], tmp_path).returncode == 0
    log = (run_dir / "train.log").read_text()
    assert f"resuming {run_dir} from step 40" in log
    assert final(run_dir)["step"] == 60 and read_results(out)[0]["status"] == "done"


def test_printed_commands_run_and_are_collected(tmp_path):
    out = tmp_path / "o u t"  # a space: the commands must quote
    args = ["--config", str(ROOT / "configs/logistic.yaml"), *TINY_SETS, "--set", "run.dir=x y",
            "--grid", "optimizer.lr=0.05,0.1", "--seeds", "0", "--out", str(out)]
    printed = sweep_cli([*args, "--print-commands"], tmp_path, timeout=60)
    assert printed.returncode == 0, printed.stderr
    lines = printed.stdout.splitlines()
    assert len(lines) == 2 and not out.exists()
    assert "--set 'run.dir=x y'" in lines[0] and "optimizer.lr=0.05" in lines[0] and "optimizer.lr=0.1" in lines[1]
    ran = subprocess.run(["bash", "-c", lines[0]], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert ran.returncode == 0, ran.stderr
    assert final(out / "runs" / "logistic__optimizer.lr=0.05__seed=0")["step"] == 20
    collected = sweep_cli([*args, "--collect"], tmp_path, timeout=60)
    assert collected.returncode == 1
    assert [r["status"] for r in read_results(out)] == ["done", "not run"]
    again = sweep_cli([*args, "--print-commands"], tmp_path, timeout=60)
    assert again.stdout.splitlines() == lines[1:]


@pytest.mark.parametrize("name, count", [("logistic_lr", 30), ("table1_offline", 36), ("heterogeneity", 105)])
def test_the_shipped_sweep_files_give_valid_configs(monkeypatch, name, count):
    monkeypatch.chdir(ROOT)
    sweep = sweepfile.load(Path(f"configs/sweeps/{name}.yaml"))
    runs = sweep.runs()
    assert len(runs) == count and sweep.seeds == [0, 1, 2]
    for run in runs:
        cfg.load(sweep.base, list(run.overrides))
