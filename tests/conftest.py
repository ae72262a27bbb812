"""Shared helpers: running the CLI in a subprocess with a timeout, and reading metrics."""

from __future__ import annotations

import json
import os
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


def free_port() -> int:
    """A port that was free a moment ago. Another process may take it before the job binds it:
    :func:`spawn` avoids the race altogether, and the CLI tests that start jobs by hand retry on
    :func:`port_taken`."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_taken(stderr: str) -> bool:
    """Whether a process failed because its store's port was taken meanwhile."""
    return "EADDRINUSE" in stderr or "address already in use" in stderr.lower()


_JOB_STORE = None


def job_store():
    """In a process that :func:`spawn` started: the job's store, for a function that starts process
    groups of its own after the first one is gone (``dist.PrefixStore(name, job_store())``)."""
    return _JOB_STORE


def _entry(fn, rank: int, world_size: int, ports, queue, args) -> None:
    global _JOB_STORE
    import datetime

    import torch.distributed as dist

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1")
    try:
        # Rank 0 binds a port the system chooses (port 0) and hands it to the others: no window in
        # which another process can take it.
        timeout = datetime.timedelta(seconds=60)
        if rank == 0:
            store = dist.TCPStore("127.0.0.1", 0, world_size, is_master=True, timeout=timeout,
                                  wait_for_workers=False)
            for _ in range(world_size - 1):
                ports.put(store.port)
        else:
            store = dist.TCPStore("127.0.0.1", ports.get(timeout=60), world_size, is_master=False, timeout=timeout)
        _JOB_STORE = store
        os.environ["MASTER_PORT"] = str(store.port)
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size, timeout=timeout)
        queue.put((rank, fn(rank, world_size, *args)))
    except BaseException as exc:  # reported to the parent, which fails the test
        queue.put((rank, exc))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def spawn(fn, world_size: int, *args, timeout: float = 120) -> list:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` gloo processes; return their results
    by rank. Fails (never hangs) after ``timeout`` seconds."""
    import multiprocessing as mp
    import queue as queue_module

    ctx = mp.get_context("spawn")
    results, ports = ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=_entry, args=(fn, r, world_size, ports, results, args)) for r in range(world_size)]
    for p in procs:
        p.start()
    out = {}
    try:
        for _ in procs:
            rank, value = results.get(timeout=timeout)
            if isinstance(value, BaseException):
                raise AssertionError(f"rank {rank} failed: {value!r}") from value
            out[rank] = value
    except queue_module.Empty:
        raise AssertionError(f"multi-process test timed out after {timeout} s") from None
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return [out[r] for r in range(world_size)]
