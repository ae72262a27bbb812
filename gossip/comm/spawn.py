"""Run a function in ``P`` gloo processes on this machine (``127.0.0.1``), as torchrun would place
them: for tests, benchmarks and experiments that need several processes without a launcher."""

from __future__ import annotations

import datetime
import multiprocessing as mp
import os
import queue as queue_module
import socket
from typing import Any, Callable

import torch.distributed as dist


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now. Another process may take it
    before a job binds it: :func:`spawn` does not use it (rank 0 binds port 0 and hands the port
    on); launchers that must name a port beforehand retry when it was taken."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_JOB_STORE: dist.Store | None = None


def job_store() -> dist.Store | None:
    """In a process that :func:`spawn` started: the job's store, for a function that starts process
    groups of its own after the first one is gone (``dist.PrefixStore(name, job_store())``)."""
    return _JOB_STORE


def _entry(fn: Callable[..., Any], rank: int, world_size: int, ports: Any, results: Any, args: tuple) -> None:
    global _JOB_STORE
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
        results.put((rank, fn(rank, world_size, *args)))
    except BaseException as exc:  # reported to the parent, which raises it
        results.put((rank, exc))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def spawn(fn: Callable[..., Any], world_size: int, *args: Any, timeout: float = 120) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` fresh gloo processes and return their
    results by rank. ``fn`` and ``args`` must be picklable (``fn`` defined at a module's top level).
    Raises AssertionError when a process fails, and after ``timeout`` seconds without a result
    (never hangs); the processes are killed when they do not end by themselves."""
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
        raise AssertionError(f"no result from {world_size} processes within {timeout} s") from None
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return [out[r] for r in range(world_size)]
