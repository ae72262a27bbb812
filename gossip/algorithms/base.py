"""The interface every decentralized algorithm implements, and the gossip helpers they share.

An algorithm owns the per-worker state of the method (replicas, error memories, edge
compressors) and runs one training step for the workers of this process: it decides which
messages travel, when the gradients are computed relative to them (so that communication can
overlap the backward pass), and how what arrives combines with the local optimizer step.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable

import torch

from gossip.network import Network, PendingRound
from gossip.worker import Worker
from topologies import Schedule, StaticSchedule, Topology


class Algorithm(ABC):
    """One decentralized method, run for the local workers of one process.

    ``topology`` is a :class:`~topologies.Topology` or a time-varying
    :class:`~topologies.Schedule`; ``options`` defaults to the algorithm's ``Options()``.
    """

    Options: type

    def __init__(self, topology: Topology | Schedule, network: Network, workers: list[Worker],
                 options: Any = None, seed: int = 0) -> None:
        self.schedule = StaticSchedule(topology) if isinstance(topology, Topology) else topology
        self.network = network
        self.workers = workers
        self.options = self.Options() if options is None else options
        self.seed = seed

    @abstractmethod
    def step(self, t: int, lr: float, compute_gradients: Callable[[], None]) -> None:
        """Run training step ``t``: call ``compute_gradients()`` exactly once (it fills every local
        worker's ``grads`` at its current ``params``), communicate, and update ``params`` in place."""

    @classmethod
    @abstractmethod
    def bytes_per_step(cls, options: Any, shapes: list[torch.Size], topology: Topology, worker: int) -> float:
        """The bytes ``worker`` sends in one step, computed from the parameter ``shapes`` alone
        (fp32): what ``--dry-run`` prints and what the network's count must equal (a mean where
        steps alternate, as PowerGossip's sides do for an odd number of rounds)."""

    def worker_state(self, worker: Worker) -> dict[str, Any]:
        """The algorithm's own state for one worker (checkpointed with it)."""
        return {}

    def load_worker_state(self, worker: Worker, state: dict[str, Any]) -> None:
        """Restore what :meth:`worker_state` returned."""

    def state_dict(self) -> dict[int, dict[str, Any]]:
        return {w.id: self.worker_state(w) for w in self.workers}

    def load_state_dict(self, state: dict[int, dict[str, Any]]) -> None:
        for w in self.workers:
            self.load_worker_state(w, state[w.id])

    # --- helpers shared by the gossip algorithms --------------------------------------------

    def send_to_neighbours(self, topology: Topology, messages: dict[int, torch.Tensor]) -> PendingRound:
        """Send each local worker's ``messages[i]`` to all its neighbours; every worker's message
        has the same size and dtype (the models are identical), which sizes the receive buffers."""
        outbox, expected = {}, {}
        for i, message in messages.items():
            for j in topology.neighbors(i):
                outbox[(i, j)] = message
                expected[(j, i)] = (message.numel(), message.dtype)
        return self.network.start(outbox, expected)

    @staticmethod
    def mix(topology: Topology, i: int, own: torch.Tensor, inbox: dict[tuple[int, int], torch.Tensor]) -> torch.Tensor:
        """``Σ_j w_ij x_j`` over ``j ∈ N(i) ∪ {i}``, neighbours in sorted order (a new tensor)."""
        mixed = own * topology.weight(i, i)
        for j in topology.neighbors(i):
            mixed.add_(inbox[(j, i)], alpha=topology.weight(i, j))
        return mixed
