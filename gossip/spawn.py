"""Run a function in ``P`` gloo processes on this machine (``127.0.0.1``), as torchrun would place
them: for tests, benchmarks and experiments that need several processes without a launcher."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_module
import socket
from typing import Any, Callable

import torch.distributed as dist


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(fn: Callable[..., Any], rank: int, world_size: int, port: int, results: Any, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size))
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
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
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(fn, r, world_size, port, results, args)) for r in range(world_size)]
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
