"""Shared helpers: running the CLI in a subprocess with a timeout, and reading metrics (tests that
need several processes use :func:`gossip.comm.spawn.spawn`)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# One intra-op thread per process, in this process and in the processes it starts (spawned workers
# inherit the environment): the suite runs on 2 shared cores, and torch's default of one thread per
# core oversubscribes them as soon as two processes compute (ResNet-20 steps ran ~7x slower).
os.environ["OMP_NUM_THREADS"] = "1"
import torch  # noqa: E402  (after the variable, for the processes that import it fresh)

torch.set_num_threads(1)

# Property-based tests draw new examples on every run here; under CI (CI set, as CI services do)
# they are derandomized, so that a failure there is reproduced by running the suite again.
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
_hypothesis_settings.load_profile("ci" if os.environ.get("CI") else "default")


def run_cli(args: list[str], cwd: Path, timeout: float = 240, torchrun: int | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m gossip.train ARGS`` (or under ``torchrun --standalone``) and capture output."""
    if torchrun is not None:
        return run_torchrun(["-m", "gossip.train", *args], torchrun, cwd, timeout)
    return _run([sys.executable, "-m", "gossip.train", *args], cwd, timeout)


def run_torchrun(args: list[str], processes: int, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``torchrun --standalone --nproc_per_node PROCESSES ARGS`` (a script or ``-m module``);
    ``--standalone`` binds its rendezvous to a port the system chooses, so no port is picked here."""
    return _run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 f"--nproc_per_node={processes}", *args], cwd, timeout)


def failure(result: subprocess.CompletedProcess) -> str:
    """What a failed job printed, without torchrun's own traceback and summary when a worker's
    message comes before them: the worker's error is the useful part."""
    stderr = result.stderr
    agent = stderr.find("torch.distributed.elastic.multiprocessing.errors.ChildFailedError")
    start = stderr.rfind("Traceback", 0, agent) if agent >= 0 else -1
    head = stderr[:start] if start > 0 else stderr
    return head[-4000:] + ("\n[torchrun's summary]\n" + stderr[-1200:] if start > 0 else "")


def _run(command: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def dry_run(args: list[str], capsys: pytest.CaptureFixture) -> tuple[str, int]:
    """What ``gossip.train --dry-run`` prints for ``args`` (a config and its ``--set``s), and the
    model's parameter count read from it."""
    from gossip.train import main

    assert main([*args, "--dry-run"]) == 0
    printed = capsys.readouterr().out
    return printed, int(re.search(r"model +\w+, ([\d,]+) parameters", printed).group(1).replace(",", ""))


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def root() -> Path:
    return ROOT


def port_taken(stderr: str) -> bool:
    """Whether a process failed because its store's port (from gossip.comm.spawn.free_port) was taken
    meanwhile: the CLI tests that start jobs by hand then start them again."""
    return "EADDRINUSE" in stderr or "address already in use" in stderr.lower()
