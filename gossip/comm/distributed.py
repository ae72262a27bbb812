"""Joining the job that ``torchrun`` started (or running alone) and choosing backend and device."""

from __future__ import annotations

import datetime
import os
import threading
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from gossip.registry import ConfigError


@dataclass(frozen=True)
class Placement:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int
    backend: str | None
    device: torch.device
    heartbeat: "Heartbeat | None" = None


def resolve_backend(backend: str, local_world_size: int) -> tuple[str, str]:
    """Return ``(backend, device type)`` for ``backend: auto|gloo|nccl``.

    ``auto`` picks NCCL when every process on this node can have a GPU of its own, gloo otherwise.
    """
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if backend == "nccl" and gpus < local_world_size:
        raise ConfigError(f"backend: nccl needs one GPU per process; this node has {gpus} GPUs "
                           f"for {local_world_size} processes (use backend: gloo)")
    if backend == "auto":
        backend = "nccl" if gpus >= local_world_size and gpus > 0 else "gloo"
    return backend, "cuda" if backend == "nccl" else "cpu"


def join(backend: str = "auto", timeout_s: float = 300.0) -> Placement:
    """Join the process group described by torchrun's environment, or run as a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    name, device_type = resolve_backend(backend, local_world_size)
    device = torch.device("cuda", local_rank) if device_type == "cuda" else torch.device("cpu")
    if device_type == "cuda":
        torch.cuda.set_device(device)
    if world_size == 1:
        return Placement(0, 1, 0, None, device)
    if not dist.is_initialized():
        kwargs: dict = {"device_id": device} if device_type == "cuda" else {}
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        if restart != "0" and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True):
            # torchrun's store outlives a restart and still holds the failed group's addresses
            store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
                                  is_master=False, timeout=datetime.timedelta(seconds=timeout_s))
            kwargs.update(store=dist.PrefixStore(f"gossip/restart_{restart}/", store), rank=rank, world_size=world_size)
        dist.init_process_group(name, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    heartbeat = Heartbeat(dist.distributed_c10d._get_default_store(), rank)
    return Placement(rank, world_size, local_rank, name, device, heartbeat)


#: How long process 0 keeps the store up after a lost peer (see :func:`leave`); the environment
#: variable ``GOSSIP_LOSS_LINGER_S`` overrides it (the tests make it short).
LOSS_LINGER_S = 10.0


def loss_linger_s() -> float:
    """:data:`LOSS_LINGER_S`, or ``GOSSIP_LOSS_LINGER_S`` from the environment when set."""
    text = os.environ.get("GOSSIP_LOSS_LINGER_S", "").strip()
    try:
        return max(0.0, float(text)) if text else LOSS_LINGER_S
    except ValueError:
        return LOSS_LINGER_S


class Heartbeat:
    """Every process bumps a counter in the job's store every ``interval`` seconds (from a daemon
    thread), so that when a round fails the survivors can tell which peers stopped: those whose
    counter no longer moves. The store lives in process 0: when it is unreachable, process 0 is lost."""

    def __init__(self, store: dist.Store, rank: int, interval: float = 0.5) -> None:
        self.store, self.rank, self.interval = store, rank, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="gossip-heartbeat", daemon=True)
        self._thread.start()

    def _key(self, rank: int) -> str:
        return f"gossip/heartbeat/{rank}"

    def _beat(self) -> None:
        while not self._stop.is_set():
            try:
                self.store.add(self._key(self.rank), 1)
            except Exception:  # the store is gone: nothing left to tell
                return
            self._stop.wait(self.interval)

    def lost(self, candidates: list[int], window_s: float | None = None) -> list[int]:
        """The ranks among ``candidates`` that stopped beating. A candidate is alive as soon as its
        counter moves, however late (a busy machine can delay a beat by seconds): the lost ones are
        those whose counter did not move at all for ``window_s`` (default 20 intervals). The wait
        ends early when every candidate moved, or when another process recorded its verdict: the
        first process to decide records it, so that processes which stop because of the loss are
        not taken for lost ones by those that notice later."""
        verdict = "gossip/lost"
        window_s = 20 * self.interval if window_s is None else window_s
        try:
            before = {r: self.store.add(self._key(r), 0) for r in candidates}
            waiting, deadline = set(candidates), time.monotonic() + window_s
            while True:
                if self.store.check([verdict]):
                    return [int(r) for r in self.store.get(verdict).decode().split(",") if r]
                waiting = {r for r in waiting if self.store.add(self._key(r), 0) == before[r]}
                if not waiting or time.monotonic() >= deadline:
                    break
                time.sleep(self.interval / 2)
            lost = sorted(waiting)
            if lost:
                self.store.compare_set(verdict, "", ",".join(map(str, lost)))
                return [int(r) for r in self.store.get(verdict).decode().split(",") if r]
            return []
        except Exception:
            return [0]

    def stop(self) -> None:
        """Stop beating and wait for the thread (a few intervals at most), so that no thread is
        inside the store when the process group is destroyed or the process exits."""
        self._stop.set()
        self._thread.join(timeout=4 * self.interval)


def leave(placement: Placement | None = None, linger_s: float = 0.0) -> None:
    """Close the process group. With ``linger_s`` (after a lost peer), process 0, which hosts the
    job's store, keeps the store up that long once its connections are closed: the others notice
    the loss when their rounds fail, a moment later, and must still read which process was lost."""
    heartbeat = placement.heartbeat if placement is not None else None
    if heartbeat is not None and linger_s <= 0:
        heartbeat.stop()  # before the process group goes: a thread left inside the store can abort the exit
    if dist.is_initialized():
        dist.destroy_process_group()
    if heartbeat is not None and linger_s > 0:
        if placement.rank == 0:
            time.sleep(linger_s)  # the heartbeat's reference keeps the store alive meanwhile
        heartbeat.stop()
