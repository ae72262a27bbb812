"""Gossip inside an existing ``torchrun`` script: one worker per process.

:class:`DecentralizedOptimizer` wraps the script's own ``torch.optim`` optimizer. Each process of
the default process group is one worker (worker id = rank, ``n`` = world size); ``step()`` runs the
chosen algorithm's step for that worker, with the gradients that the script's ``backward()`` has
already computed, and talks point to point with the worker's neighbours only.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from gossip.algorithms import ALGORITHMS, Algorithm
from gossip.config import TopologyConfig, parse_algorithm
from gossip.registry import ConfigError
from gossip.comm.messages import Network
from gossip.algorithms.worker import Worker
from topologies import Schedule, StaticSchedule, Topology


class DecentralizedOptimizer:
    """Run ``algorithm`` over the default process group in place of ``optimizer.step()``.

    ``optimizer`` is a ``torch.optim`` optimizer over ``model``'s parameters; it does the local
    step (its learning rates are left as they are, so an LR scheduler built on it keeps working).
    ``algorithm`` names a registered algorithm and ``options`` are its keys, as in the YAML
    ``algorithm:`` section (``iterations=4``, ``order="step_first"``, ...). ``topology`` is a
    topology name (``ring``, ``complete``, ...) or a :class:`~topologies.Topology` on as many
    nodes as there are processes. ``seed`` seeds the algorithm's randomness (e.g. PowerGossip's
    shared vectors); ``timeout_s`` bounds every wait for a neighbour's message.

    The model's parameters are moved into one flat vector (each parameter becomes a view of it)
    when the optimizer is built: build it after moving the model to its device, and load weights
    with ``model.load_state_dict`` (it copies into the views) rather than by replacing tensors.

    ``optimizer`` (the wrapped one), ``worker``, ``algorithm`` and ``network`` are the pieces it
    runs; ``steps`` counts the steps taken.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, model: nn.Module, algorithm: str = "dpsgd",
                 topology: str | Topology = "ring", *, seed: int = 0, timeout_s: float = 600.0,
                 **options: Any) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("DecentralizedOptimizer needs the default process group: call "
                               "torch.distributed.init_process_group() first (e.g. under torchrun)")
        rank, world_size = dist.get_rank(), dist.get_world_size()
        algorithm_options = parse_algorithm({**options, "name": algorithm})
        schedule = _schedule(topology, world_size, seed)
        implementation = ALGORITHMS.implementation(algorithm_options.name)
        try:
            implementation.check_topology(schedule, algorithm_options.name)
        except ValueError as exc:
            raise ConfigError(f"algorithm.{exc}") from None
        device = next((p.device for p in model.parameters() if p.requires_grad), torch.device("cpu"))
        self.network = Network(world_size, rank, world_size, device, timeout_s=timeout_s)
        self.worker = Worker(rank, model, optimizer, seed, device)
        self.algorithm: Algorithm = implementation(schedule, self.network, [self.worker],
                                                   options=algorithm_options, seed=seed)
        self.optimizer = self.worker.optimizer
        self.steps = 0
        named = dict(model.named_parameters())
        self._parameters = [named[name] for name in self.worker.names]
        self._grad_views = [p.grad for p in self._parameters]

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The wrapped optimizer's parameter groups (read and set ``lr`` here as usual)."""
        return self.optimizer.param_groups

    @property
    def bytes_sent(self) -> int:
        """The bytes this worker has sent to its neighbours so far."""
        return self.network.bytes_sent[self.worker.id]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the gradients in place, in the flat gradient vector, so that the next backward
        writes straight into it. ``set_to_none`` is accepted for compatibility with
        ``torch.optim.Optimizer.zero_grad``; gradients are never set to ``None`` here (a missing
        gradient counts as zero in :meth:`step` either way)."""
        self.worker.grads.zero_()
        self._use_grad_views()

    def step(self) -> None:
        """One step of the algorithm for this worker, with the gradients already in ``p.grad``.

        Every process must call it the same number of times: a step exchanges messages with the
        worker's neighbours."""
        if any(p.grad is not view for p, view in zip(self._parameters, self._grad_views)):
            torch.cat([_flat_grad(p) for p in self._parameters], out=self.worker.grads)
            self._use_grad_views()
        self.algorithm.step(self.steps, None, lambda: None)
        self.steps += 1

    def consensus_distance(self) -> float:
        """``1/n Σ_i ||x_i − x̄||²`` over all workers (a collective: every process must call it)."""
        return self.algorithm.consensus_distance(self.algorithm.averaged_params())

    def state_dict(self) -> dict[str, Any]:
        """What :meth:`load_state_dict` needs to continue this worker exactly, except the model's
        parameters and buffers: save those with ``model.state_dict()``."""
        return {"steps": self.steps, "optimizer": self.optimizer.state_dict(),
                "algorithm": self.algorithm.worker_state(self.worker), "bytes_sent": self.bytes_sent}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (load the model's own state separately)."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.algorithm.load_worker_state(self.worker, state["algorithm"])
        self.network.bytes_sent[self.worker.id] = state["bytes_sent"]
        self.steps = state["steps"]

    def _use_grad_views(self) -> None:
        for p, view in zip(self._parameters, self._grad_views):
            p.grad = view


def _flat_grad(p: nn.Parameter) -> torch.Tensor:
    return torch.zeros(p.numel(), dtype=p.dtype, device=p.device) if p.grad is None else p.grad.reshape(-1)


def _schedule(topology: str | Topology, world_size: int, seed: int) -> Schedule:
    """The topology schedule for ``world_size`` workers from a name or a :class:`Topology`."""
    if isinstance(topology, Topology):
        if topology.n != world_size:
            raise ConfigError(f"topology: {topology.name} has {topology.n} nodes but the process group "
                              f"has {world_size} processes (one worker each)")
        return StaticSchedule(topology)
    if not isinstance(topology, str):
        raise ConfigError(f"topology: expected a name or a topologies.Topology, got {type(topology).__name__}")
    try:
        return TopologyConfig(name=topology).build(world_size, seed)
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(f"topology: {' '.join(str(exc).split())} (workers = {world_size})") from None
