"""Joining the job that ``torchrun`` started (or running alone) and choosing backend and device."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Placement:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int
    backend: str | None
    device: torch.device


def resolve_backend(backend: str, local_world_size: int) -> tuple[str, str]:
    """Return ``(backend, device type)`` for ``backend: auto|gloo|nccl``.

    ``auto`` picks NCCL when every process on this node can have a GPU of its own, gloo otherwise.
    """
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if backend == "nccl" and gpus < local_world_size:
        raise RuntimeError(f"backend: nccl needs one GPU per process; this node has {gpus} GPUs "
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
        kwargs = {"device_id": device} if device_type == "cuda" else {}
        dist.init_process_group(name, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    return Placement(rank, world_size, local_rank, name, device)


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
