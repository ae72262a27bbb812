"""Runs that survive: exact resume (every algorithm, across process counts), refused corrupt
checkpoints, lost processes, non-finite losses and mismatched configs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gossip import checkpoint
from gossip.algorithms import ALGORITHMS
from gossip.spawn import free_port
from gossip.train import main

from conftest import ROOT, read_metrics, run_cli

CONFIG = str(ROOT / "configs/logistic.yaml")
BASE = ["--set", "workers=4", "--set", "train.eval_every=10", "--set", "train.checkpoint_every=10",
        "--set", "task.samples_per_worker=256", "--no-progress"]


def comparable(run_dir: Path) -> list[dict]:
    """The metrics without wall-clock times."""
    return [{k: v for k, v in r.items() if not k.startswith("time_")} for r in read_metrics(run_dir)]


def final_params(run_dir: Path) -> list[torch.Tensor]:
    directory = checkpoint.find_latest(run_dir)
    return [checkpoint.load_worker(directory, w, torch.device("cpu"))["worker"]["params"] for w in range(4)]


def assert_same_run(resumed: Path, reference: Path, bitwise: bool = True) -> None:
    """Same metrics (but wall times) and the same final parameters: bitwise, or, across process
    counts, up to the order of float reductions (all-reduce sums per process first)."""
    got, want = comparable(resumed), comparable(reference)
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), (a["step"], key)
    for a, b in zip(final_params(resumed), final_params(reference)):
        if bitwise:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def reference_run(tmp_path: Path, algorithm: str, steps: int = 40) -> Path:
    run_dir = tmp_path / f"reference-{algorithm}"
    assert main(["--config", CONFIG, "--run-dir", str(run_dir), "--set", f"algorithm.name={algorithm}",
                 "--set", f"train.steps={steps}", *BASE]) == 0
    return run_dir


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS.entries))
def test_stopped_and_resumed_equals_uninterrupted(tmp_path, algorithm):
    reference = reference_run(tmp_path, algorithm)
    run_dir = tmp_path / "run"
    args = ["--set", f"algorithm.name={algorithm}", "--set", "train.steps=25", *BASE]
    assert main(["--config", CONFIG, "--run-dir", str(run_dir), *args]) == 0
    assert main(["--resume", str(run_dir), "--set", "train.steps=40", "--no-progress"]) == 0
    assert_same_run(run_dir, reference)


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS.entries))
def test_two_processes_then_one_process_equals_uninterrupted(tmp_path, algorithm):
    reference = reference_run(tmp_path, algorithm)
    run_dir = tmp_path / "run"
    first = run_cli(["--config", CONFIG, "--run-dir", str(run_dir), "--set", f"algorithm.name={algorithm}",
                     "--set", "train.steps=20", *BASE], cwd=tmp_path, torchrun=2, timeout=180)
    assert first.returncode == 0, first.stderr
    assert main(["--resume", str(run_dir), "--set", "train.steps=40", "--no-progress"]) == 0
    assert_same_run(run_dir, reference, bitwise=False)


def test_one_process_then_two_processes_equals_uninterrupted(tmp_path):
    reference = reference_run(tmp_path, "dpsgd")
    run_dir = tmp_path / "run"
    assert main(["--config", CONFIG, "--run-dir", str(run_dir), "--set", "train.steps=20", *BASE]) == 0
    second = run_cli(["--resume", str(run_dir), "--set", "train.steps=40", "--no-progress"], cwd=tmp_path,
                     torchrun=2, timeout=180)
    assert second.returncode == 0, second.stderr
    assert_same_run(run_dir, reference, bitwise=False)


def test_truncated_checkpoint_is_refused_and_the_previous_one_used(tmp_path, capsys):
    reference = reference_run(tmp_path, "dpsgd")
    run_dir = tmp_path / "run"
    assert main(["--config", CONFIG, "--run-dir", str(run_dir), "--set", "train.steps=30", *BASE]) == 0
    victim = run_dir / "checkpoints/step_00000030" / checkpoint.worker_file(2)
    victim.write_bytes(victim.read_bytes()[:100])
    capsys.readouterr()
    assert main(["--resume", str(run_dir), "--set", "train.steps=40", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "refusing checkpoint step_00000030: worker_00002.pt has 100 bytes" in err
    assert "resuming" in err and "from step 20" in err
    assert_same_run(run_dir, reference)


def test_resume_refuses_keys_that_define_the_run(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["--config", CONFIG, "--run-dir", str(run_dir), "--set", "train.steps=10", *BASE]) == 0
    capsys.readouterr()
    assert main(["--resume", str(run_dir), "--set", "optimizer.lr=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --set optimizer.lr: cannot change when resuming") and "\n" not in err
    assert main(["--resume", str(tmp_path / "nothing")]) == 2


def test_non_finite_loss_stops_the_run_naming_worker_and_step(tmp_path, capsys):
    code = main(["--config", CONFIG, "--run-dir", str(tmp_path / "run"), "--set", "task.name=least_squares",
                 "--set", "optimizer.lr=1e6", "--set", "train.steps=200", *BASE])
    assert code == 3
    assert "non-finite training loss on worker" in capsys.readouterr().err


def _start_job(args_of_rank, world_size: int) -> list[subprocess.Popen]:
    """Start ``world_size`` CLI processes that form one job (as torchrun would) without torchrun, so
    that the test can kill one of them."""
    port = free_port()
    procs = []
    for rank in range(world_size):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                   WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size),
                   OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
        procs.append(subprocess.Popen([sys.executable, "-m", "gossip.train", *args_of_rank(rank)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def _finish(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int, str]]:
    results = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError(f"a process did not stop within {timeout} s") from None
        results.append((p.returncode, err))
    return results


@pytest.mark.parametrize("failure", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "hung"])
def test_a_lost_process_stops_the_others_naming_it_and_the_run_resumes(tmp_path, failure):
    """A process that dies (SIGKILL) or hangs (SIGSTOP) ends the others within the timeout."""
    run_dir = tmp_path / "run"
    args = ["--config", CONFIG, "--run-dir", str(run_dir), "--set", "train.steps=1000000",
            "--set", "run.timeout_s=5", *BASE]
    procs = _start_job(lambda rank: args, 4)
    deadline = time.time() + 120
    while not (run_dir / "checkpoints/latest.json").exists():
        assert time.time() < deadline and all(p.poll() is None for p in procs), "the job did not start"
        time.sleep(0.2)
    procs[2].send_signal(failure)
    try:
        results = {rank: result for rank, result in zip((0, 1, 3), _finish([procs[0], procs[1], procs[3]], 30))}
    finally:
        procs[2].kill()
        procs[2].communicate()
    for rank in (0, 1, 3):
        code, err = results[rank]
        assert code == 3, err
        assert "lost contact with process 2 (worker 2)" in err.strip().splitlines()[-1]
    step = checkpoint.manifest_step(checkpoint.find_latest(run_dir))
    assert main(["--resume", str(run_dir), "--set", f"train.steps={step + 10}", "--no-progress"]) == 0
    assert read_metrics(run_dir)[-1]["step"] == step + 10


def test_processes_with_different_configs_are_stopped_before_any_step(tmp_path):
    run_dir = tmp_path / "run"
    args = ["--config", CONFIG, "--run-dir", str(run_dir), "--set", "train.steps=10", *BASE]
    procs = _start_job(lambda rank: args + (["--set", "seed=1"] if rank == 1 else []), 2)
    for code, err in _finish(procs, timeout=120):
        assert code == 2
        assert "config differs" in err and "at: seed" in err
    assert not (run_dir / "metrics.jsonl").exists()


def test_sigterm_saves_a_checkpoint_and_stops(tmp_path):
    run_dir = tmp_path / "run"
    procs = _start_job(lambda rank: ["--config", CONFIG, "--run-dir", str(run_dir), "--set", "workers=2",
                                     "--set", "train.steps=1000000", "--set", "train.checkpoint_every=0",
                                     "--set", "train.eval_every=50", "--no-progress"], 1)
    deadline = time.time() + 120
    while not (run_dir / "metrics.jsonl").exists():
        assert time.time() < deadline and procs[0].poll() is None, "the run did not start"
        time.sleep(0.2)
    procs[0].send_signal(signal.SIGTERM)
    ((code, err),) = _finish(procs, timeout=60)
    assert code == 0, err
    assert checkpoint.find_latest(run_dir) is not None
