"""Shared helpers: running the CLI in a subprocess with a timeout, and reading metrics (tests that
need several processes use :func:`gossip.spawn.spawn`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(args: list[str], cwd: Path, timeout: float = 240, torchrun: int | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m gossip.train ARGS`` (or under ``torchrun --standalone``) and capture output."""
    launcher = [sys.executable, "-m", "gossip.train"]
    if torchrun is not None:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={torchrun}", "-m", "gossip.train"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run(launcher + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def root() -> Path:
    return ROOT
