"""The interface of a task (model + data + loss + metric) and the data streams workers draw from."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gossip.comm.seeding import generator


@dataclass
class TaskPlan:
    """What ``--dry-run`` shows of a task without reading its data."""

    model: nn.Module
    steps_per_epoch: int
    note: str = ""


class DataError(ValueError):
    """A data set that is missing or malformed (at most three lines: what, where, how to fetch it)."""


class DataStream(ABC):
    """One worker's endless sequence of training batches, resumable from its ``state_dict``."""

    @abstractmethod
    def next(self) -> tuple[torch.Tensor, ...]:
        """The next batch (CPU tensors)."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class ShuffledBatches(DataStream):
    """Batches of a worker's examples ``data`` (tensors indexed along dim 0), reshuffled every
    epoch by the worker's own generator; the last incomplete batch of an epoch is dropped."""

    def __init__(self, data: tuple[torch.Tensor, ...], batch_size: int, seed: int, *key: object) -> None:
        size = len(data[0])
        if size < batch_size:
            raise ValueError(f"a worker holds {size} examples, fewer than one batch of {batch_size}")
        self.data, self.size, self.batch_size = data, size, batch_size
        self.generator = generator(seed, "data", *key)
        self.order = torch.randperm(size, generator=self.generator)
        self.position = 0

    def next(self) -> tuple[torch.Tensor, ...]:
        if self.position + self.batch_size > self.size:
            self.order = torch.randperm(self.size, generator=self.generator)
            self.position = 0
        indices = self.order[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        return tuple(tensor[indices] for tensor in self.data)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "order": self.order, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.order, self.position = state["order"], state["position"]


class Task(ABC):
    """Model, data, loss and metric of one experiment, for ``workers`` workers.

    ``Options`` is the task's options dataclass (its config keys); ``metric`` names the quality
    measure :meth:`evaluate` reports besides ``loss`` (``"accuracy"``, ``"perplexity"`` or ``None``).
    """

    Options: type
    metric: str | None = None

    def __init__(self, options: Any, workers: int, seed: int, batch_size: int) -> None:
        self.options, self.workers, self.seed, self.batch_size = options, workers, seed, batch_size

    @classmethod
    def plan(cls, options: Any, workers: int, seed: int, batch_size: int) -> TaskPlan:
        """The model and epoch length for ``--dry-run``; tasks with data on disk override this so
        that a plan needs no data (this default builds the task)."""
        task = cls(options, workers, seed, batch_size)
        return TaskPlan(task.build_model(), task.steps_per_epoch())

    def save(self, run_dir: Path) -> None:
        """Write what a run needs to document its data (e.g. a random partition) into ``run_dir``."""

    @abstractmethod
    def build_model(self) -> nn.Module:
        """A freshly initialised model (the caller seeds torch's generator)."""

    @abstractmethod
    def steps_per_epoch(self) -> int:
        """Steps for one pass of a worker over its shard."""

    @abstractmethod
    def stream(self, worker: int) -> DataStream:
        """The training batches of ``worker``."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...], memory: dict[str, Any]) -> torch.Tensor:
        """The training loss of ``model`` on ``batch`` (``memory`` is the worker's scratch space,
        e.g. a carried hidden state)."""

    @abstractmethod
    def evaluate(self, model: nn.Module, full: bool = True) -> dict[str, float]:
        """``{"loss": ..., metric: ...}`` of ``model`` on the held-out data; ``full=False`` asks for
        the cheaper part only (e.g. no test split), for the workers' own models."""
