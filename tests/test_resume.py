"""Runs that survive: exact resume (every algorithm, across process counts), refused corrupt
checkpoints, lost processes, non-finite losses and mismatched configs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from gossip.train import checkpoint
from gossip.algorithms import ALGORITHMS
from gossip.comm.spawn import free_port, spawn
from gossip.train import main

from conftest import ROOT, port_taken, read_metrics, run_cli

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
    """Same records (the same steps first, so that a run with fewer records fails) with the same
    metrics but wall times, and the same final parameters: bitwise, or, across process counts, up
    to the order of float reductions (a process sums its own workers' values before the
    all-reduce: float32 rounding, ~1e-7 relative per operation, over 40 steps)."""
    got, want = comparable(resumed), comparable(reference)
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        if bitwise:
            assert a == b, a["step"]
        else:
            for key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-9), (a["step"], key)
    for a, b in zip(final_params(resumed), final_params(reference), strict=True):
        if bitwise:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# Every algorithm (D² on the complete graph, SGP on the one-peer directed exponential graph and on
# a random directed graph), and PowerGossip with fresh random projections every round (warm_start false:
# the edges' generators must resume where they stopped).
VARIANTS = {name: [f"algorithm.name={name}"] for name in sorted(ALGORITHMS.entries)}
VARIANTS["powergossip-cold"] = ["algorithm.name=powergossip", "algorithm.warm_start=false"]
VARIANTS["d2"].append("topology.name=complete")  # the 4-ring's W has the eigenvalue -1/3 that D² refuses
# D² under a warm-up that changes η at every step (8 steps per epoch): its η_{t-1} is checkpointed.
VARIANTS["d2-warmup"] = [*VARIANTS["d2"], "lr_schedule.name=warmup_step", "lr_schedule.warmup_epochs=6",
                         "lr_schedule.warmup_factor=3"]
VARIANTS["sgp"].append("topology.name=one_peer_directed_exponential")  # directed and time-varying
# Push-sum weights that move: out-degrees 1 and 2 on the 4 workers (seed 0).
VARIANTS["sgp-random"] = ["algorithm.name=sgp", "topology.name=directed_erdos_renyi", "topology.p=0.5"]
#: What runs in two processes: every algorithm once, and SGP with moving weights.
TWO_PROCESS_VARIANTS = [*sorted(ALGORITHMS.entries), "sgp-random"]


def sets(variant: str) -> list[str]:
    return [arg for item in VARIANTS[variant] for arg in ("--set", item)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run per variant (40 steps unless asked), shared by the tests of this module."""
    runs: dict[str, Path] = {}

    def get(variant: str, steps: int = 40) -> Path:
        if (variant, steps) not in runs:
            run_dir = tmp_path_factory.mktemp("reference") / variant
            assert main(["--config", CONFIG, "--run-dir", str(run_dir), *sets(variant), "--set", f"train.steps={steps}",
                         *BASE]) == 0
            runs[variant, steps] = run_dir
        return runs[variant, steps]

    return get


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_stopped_and_resumed_equals_uninterrupted(tmp_path, reference, variant):
    run_dir = tmp_path / "run"
    assert main(["--config", CONFIG, "--run-dir", str(run_dir), *sets(variant), "--set", "train.steps=25",
                 *BASE]) == 0
    assert main(["--resume", str(run_dir), "--set", "train.steps=40", "--no-progress"]) == 0
    assert_same_run(run_dir, reference(variant))


def test_adamw_with_a_cosine_schedule_from_yaml_resumes_bitwise(tmp_path, capsys):
    """AdamW's moments and the schedule's position come back: a 40-step run whose last checkpoint
    is lost resumes from step 30 and ends as the uninterrupted run (the cosine ends at step 40)."""
    config = yaml.safe_load(Path(CONFIG).read_text())
    config["optimizer"] = {"name": "adamw", "lr": 0.01, "betas": [0.9, 0.95], "weight_decay": 0.1}
    config["lr_schedule"] = {"name": "cosine", "warmup_epochs": 1, "final_factor": 0.1}
    path = tmp_path / "adamw_cosine.yaml"
    path.write_text(yaml.safe_dump(config))
    reference, run_dir = tmp_path / "reference", tmp_path / "run"
    assert main(["--config", str(path), "--run-dir", str(reference), "--set", "train.steps=40", *BASE]) == 0
    shutil.copytree(reference, run_dir)
    shutil.rmtree(run_dir / checkpoint.DIRECTORY / "step_00000040")
    capsys.readouterr()
    assert main(["--resume", str(run_dir), "--no-progress"]) == 0
    assert "from step 30" in capsys.readouterr().err
    assert_same_run(run_dir, reference)


def _first_20_steps_of_every_variant(rank: int, world_size: int, root: str) -> dict[str, int]:
    """In each of 2 processes (2 workers each): ``main()`` for 20 steps of every algorithm, one
    after the other, each in a process group of its own on the job's store (the CLI's own launch
    under torchrun is tested by the one-process-then-two test)."""
    import datetime

    import torch.distributed as dist

    from gossip.comm.spawn import job_store

    codes = {}
    for k, variant in enumerate(TWO_PROCESS_VARIANTS):
        if not dist.is_initialized():  # main() closed the previous one
            dist.init_process_group("gloo", store=dist.PrefixStore(f"variant-{k}/", job_store()), rank=rank,
                                    world_size=world_size, timeout=datetime.timedelta(seconds=120))
        codes[variant] = main(["--config", CONFIG, "--run-dir", str(Path(root) / variant), *sets(variant),
                               "--set", "train.steps=20", *BASE])
    return codes


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("two-processes")
    for codes in spawn(_first_20_steps_of_every_variant, 2, str(root), timeout=600):
        assert codes == {variant: 0 for variant in TWO_PROCESS_VARIANTS}, codes
    return root


@pytest.mark.parametrize("variant", TWO_PROCESS_VARIANTS)
def test_two_processes_then_one_process_equals_uninterrupted(tmp_path, reference, two_process_runs, variant):
    run_dir = tmp_path / "run"
    shutil.copytree(two_process_runs / variant, run_dir)
    assert main(["--resume", str(run_dir), "--set", "train.steps=40", "--no-progress"]) == 0
    assert_same_run(run_dir, reference(variant), bitwise=False)


def test_push_sum_weights_move_and_are_checkpointed(reference):
    """The random directed graph's variant really exercises push-sum: its checkpointed weights are
    not all 1 (on the other topologies of these tests they stay 1)."""
    directory = checkpoint.find_latest(reference("sgp-random"))
    weights = [checkpoint.load_worker(directory, w, torch.device("cpu"))["algorithm"]["weight"].item() for w in range(4)]
    assert max(abs(w - 1) for w in weights) > 0.05, weights


def test_one_process_then_two_processes_equals_uninterrupted(tmp_path, reference):
    run_dir = tmp_path / "run"
    assert main(["--config", CONFIG, "--run-dir", str(run_dir), "--set", "train.steps=20", *BASE]) == 0
    second = run_cli(["--resume", str(run_dir), "--set", "train.steps=40", "--no-progress"], cwd=tmp_path,
                     torchrun=2, timeout=180)
    assert second.returncode == 0, second.stderr
    assert_same_run(run_dir, reference("dpsgd"), bitwise=False)


@pytest.mark.parametrize("damage, refusal", [
    (lambda data: data[:100], "worker_00002.pt has 100 bytes"),
    # one bit flipped in the last byte: the size is right, the SHA-256 is not
    (lambda data: data[:-1] + bytes([data[-1] ^ 1]), "worker_00002.pt does not match its SHA-256 in the manifest"),
], ids=["truncated", "altered"])
def test_a_damaged_checkpoint_is_refused_and_the_previous_one_used(tmp_path, reference, capsys, damage, refusal):
    run_dir = tmp_path / "run"
    assert main(["--config", CONFIG, "--run-dir", str(run_dir), "--set", "train.steps=30", *BASE]) == 0
    victim = run_dir / "checkpoints/step_00000030" / checkpoint.worker_file(2)
    victim.write_bytes(damage(victim.read_bytes()))
    capsys.readouterr()
    assert main(["--resume", str(run_dir), "--set", "train.steps=40", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"refusing checkpoint step_00000030: {refusal}" in err
    assert "resuming" in err and "from step 20" in err
    assert_same_run(run_dir, reference("dpsgd"))


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


# After a lost peer process 0 keeps the job's store up this long (10 s by default): long enough
# for the others, which notice the loss within one step of each other, to read the verdict.
LINGER_S = "2"


def _launch(args_of_rank, world_size: int) -> list[subprocess.Popen]:
    port = free_port()
    procs = []
    for rank in range(world_size):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                   WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size),
                   OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), GOSSIP_LOSS_LINGER_S=LINGER_S)
        procs.append(subprocess.Popen([sys.executable, "-m", "gossip.train", *args_of_rank(rank)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def _start_job(args_of_rank, world_size: int, started, tries: int = 3) -> list[subprocess.Popen]:
    """Start ``world_size`` CLI processes that form one job (as torchrun would) without torchrun, so
    that the test can kill one of them, and wait until ``started()``. The port comes from
    :func:`free_port`; when another process took it meanwhile, the job is started again."""
    for _ in range(tries):
        procs = _launch(args_of_rank, world_size)
        deadline = time.time() + 120
        while not started():
            assert time.time() < deadline, "the job did not start within 120 s"
            if any(p.poll() is not None for p in procs):
                for p in procs:
                    p.kill()
                errors = "".join(p.communicate()[1] for p in procs)
                if port_taken(errors):
                    break
                raise AssertionError(f"the job did not start: {errors}")
            time.sleep(0.2)
        else:
            return procs
    raise AssertionError(f"the port was taken {tries} times")


def _run_job(args_of_rank, world_size: int, timeout: float, tries: int = 3) -> list[tuple[int, str]]:
    """Start a job as :func:`_start_job` does and wait for its processes' exit codes and stderr."""
    for _ in range(tries):
        results = _finish(_launch(args_of_rank, world_size), timeout)
        if not any(port_taken(err) for _, err in results):
            return results
    raise AssertionError(f"the port was taken {tries} times")


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
    procs = _start_job(lambda rank: args, 4, started=(run_dir / "checkpoints/latest.json").exists)
    procs[2].send_signal(failure)
    try:
        # the survivors stop within run.timeout_s (5) + the heartbeat window (20 × 0.5 s) + LINGER_S
        results = {rank: result for rank, result in zip((0, 1, 3), _finish([procs[0], procs[1], procs[3]], 60))}
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
    for code, err in _run_job(lambda rank: args + (["--set", "seed=1"] if rank == 1 else []), 2, timeout=120):
        assert code == 2
        assert "config differs" in err and "at: seed" in err
    assert not (run_dir / "metrics.jsonl").exists()


def test_sigterm_saves_a_checkpoint_and_stops(tmp_path):
    run_dir = tmp_path / "run"
    procs = _start_job(lambda rank: ["--config", CONFIG, "--run-dir", str(run_dir), "--set", "workers=2",
                                     "--set", "train.steps=1000000", "--set", "train.checkpoint_every=0",
                                     "--set", "train.eval_every=50", "--no-progress"], 1,
                       started=(run_dir / "metrics.jsonl").exists)
    procs[0].send_signal(signal.SIGTERM)
    ((code, err),) = _finish(procs, timeout=60)
    assert code == 128 + signal.SIGTERM, err  # a status that torchrun's --max-restarts restarts
    assert checkpoint.find_latest(run_dir) is not None


# --- restarts: the same command continues the run (run.resume: auto) -------------------------------

RESTARTED = ["dpsgd", "powergossip", "choco"]
# Long enough (about 2 s of training in 4 processes) that the test stops the job after its first
# checkpoint (step 10) and well before its end.
LONG = 120


def _torchrun(args: list[str], nproc: int, *launcher: str) -> subprocess.Popen:
    """``torchrun --standalone`` (which picks a free port itself) running the CLI, in the background."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", GOSSIP_LOSS_LINGER_S=LINGER_S)
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             f"--nproc_per_node={nproc}", *launcher, "-m", "gossip.train", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(run_dir: Path, job: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not checkpoint.complete_checkpoints(run_dir / checkpoint.DIRECTORY):
        if job.poll() is not None or time.time() > deadline:
            job.kill()
            raise AssertionError(f"no checkpoint within {timeout} s: {job.communicate()[1]}")
        time.sleep(0.02)


def _worker_pid(job: subprocess.Popen, local_rank: int) -> int:
    """The pid of torchrun's worker process ``local_rank`` (torchrun starts them as its children)."""
    children = Path(f"/proc/{job.pid}/task/{job.pid}/children").read_text().split()
    for pid in children:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"LOCAL_RANK={local_rank}".encode() in environ:
            return int(pid)
    raise AssertionError(f"torchrun has no worker {local_rank} among {children}")


def _communicate(job: subprocess.Popen, timeout: float) -> tuple[int, str]:
    try:
        _, err = job.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        job.kill()
        raise AssertionError(f"the job did not end within {timeout} s: {job.communicate()[1]}") from None
    return job.returncode, err


@pytest.mark.parametrize("variant", RESTARTED)
def test_torchrun_restarts_a_job_after_a_killed_process_and_it_continues(tmp_path, reference, variant):
    run_dir = tmp_path / "run"
    args = ["--config", CONFIG, "--run-dir", str(run_dir), *sets(variant), "--set", f"train.steps={LONG}",
            "--set", "run.timeout_s=20", *BASE]  # the restarted processes' first collective waits for the slowest
    job = _torchrun(args, 4, "--max-restarts=1")
    _wait_for_checkpoint(run_dir, job)
    os.kill(_worker_pid(job, 2), signal.SIGKILL)
    code, err = _communicate(job, timeout=180)
    assert code == 0, err
    assert "resuming" in err
    assert_same_run(run_dir, reference(variant, LONG), bitwise=False)  # 4 processes, and 1 for the reference


@pytest.mark.parametrize("variant", RESTARTED)
def test_sigterm_on_4_processes_then_the_same_command_on_2_continues(tmp_path, reference, variant):
    run_dir = tmp_path / "run"
    args = ["--config", CONFIG, "--run-dir", str(run_dir), *sets(variant), "--set", f"train.steps={LONG}", *BASE]
    job = _torchrun(args, 4)
    _wait_for_checkpoint(run_dir, job)
    job.send_signal(signal.SIGTERM)  # torchrun passes it on to its 4 processes
    code, err = _communicate(job, timeout=120)
    assert code != 0, err
    stopped = checkpoint.manifest_step(checkpoint.find_latest(run_dir))
    assert 0 < stopped < LONG
    second = run_cli(args, cwd=tmp_path, torchrun=2, timeout=180)
    assert second.returncode == 0, second.stderr
    assert f"from step {stopped} (checkpoint {run_dir / 'checkpoints' / f'step_{stopped:08d}'})" in second.stderr
    assert_same_run(run_dir, reference(variant, LONG), bitwise=False)


@pytest.mark.parametrize("variant", RESTARTED)
def test_the_same_command_skips_a_truncated_newest_checkpoint(tmp_path, reference, variant, capsys):
    run_dir = tmp_path / "run"
    args = ["--config", CONFIG, "--run-dir", str(run_dir), *sets(variant), "--set", "train.steps=40", *BASE]
    assert main(args) == 0
    victim = run_dir / "checkpoints/step_00000040" / checkpoint.worker_file(1)
    victim.write_bytes(victim.read_bytes()[:100])
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "refusing checkpoint step_00000040: worker_00001.pt has 100 bytes" in err
    assert f"resuming {run_dir} from step 30 (checkpoint {run_dir}/checkpoints/step_00000030)" in err
    assert_same_run(run_dir, reference(variant))


def test_a_directory_with_another_config_is_refused_naming_the_key(tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = ["--config", CONFIG, "--run-dir", str(run_dir), "--set", "train.steps=10", *BASE]
    assert main(args) == 0
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    capsys.readouterr()
    assert main(args + ["--set", "optimizer.lr=0.2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {run_dir} holds a run with optimizer.lr=0.1; this config has 0.2 "
                   "(set run.resume: never or use another run.dir)")
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before


def test_the_same_config_without_a_checkpoint_starts_over(tmp_path, reference, capsys):
    run_dir = tmp_path / "run"
    args = ["--config", CONFIG, "--run-dir", str(run_dir), "--set", "train.steps=40", *BASE]
    assert main(args) == 0
    shutil.rmtree(run_dir / "checkpoints")
    capsys.readouterr()
    assert main(args) == 0
    assert "no complete checkpoint: starting over" in capsys.readouterr().err
    assert_same_run(run_dir, reference("dpsgd"))


def test_timed_checkpoints_and_keep_checkpoints(tmp_path):
    run_dir = tmp_path / "run"
    common = ["--config", CONFIG, "--run-dir", str(run_dir), "--set", "train.checkpoint_every=0", *BASE[:2],
              "--set", "task.samples_per_worker=256", "--no-progress"]
    # every step ends more than 1e-9 s after the last checkpoint: one checkpoint per step
    assert main(common + ["--set", "train.steps=6", "--set", "train.checkpoint_every_s=1e-9",
                          "--set", "run.keep_checkpoints=0"]) == 0
    steps = [checkpoint.manifest_step(d) for d in checkpoint.complete_checkpoints(run_dir / "checkpoints")]
    assert steps == [6, 5, 4, 3, 2, 1]
    assert main(common + ["--set", "train.steps=9", "--set", "train.checkpoint_every=1",
                          "--set", "run.keep_checkpoints=3"]) == 0
    steps = [checkpoint.manifest_step(d) for d in checkpoint.complete_checkpoints(run_dir / "checkpoints")]
    assert steps == [9, 8, 7]
