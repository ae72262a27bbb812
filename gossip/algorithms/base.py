"""The interface every decentralized algorithm implements, and the gossip helpers they share.

An algorithm owns the per-worker state of the method (replicas, error memories, edge
compressors) and runs one training step for the workers of this process: it decides which
messages travel, when the gradients are computed relative to them (so that communication can
overlap the backward pass), and how what arrives combines with the local optimizer step.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch

from gossip.registry import option
from gossip.comm.messages import Network, PendingRound
from gossip.algorithms.worker import Worker
from topologies import Schedule, StaticSchedule, Topology

#: When a gossiping algorithm's gossip happens relative to its local optimizer step.
Order = Literal["overlap", "step_first"]


def order_events(order: Order) -> tuple[str, ...]:
    """A step's events (:meth:`Algorithm.step_events`) for one gossip round in ``order``."""
    return ("round", "compute") if order == "overlap" else ("compute", "round")


class Algorithm(ABC):
    """One decentralized method, run for the local workers of one process.

    ``topology`` is a :class:`~topologies.Topology` or a time-varying
    :class:`~topologies.Schedule`; ``options`` defaults to the algorithm's ``Options()``.
    """

    Options: type
    #: True for an algorithm whose state is tied to one fixed W (a time-varying topology is refused).
    requires_static: bool = False
    #: True for an algorithm that is correct with a column-stochastic W on a directed graph
    #: (push-sum); the others need a symmetric, doubly stochastic W.
    accepts_directed: bool = False
    #: Why the algorithm cannot stay correct when a message is dropped (``faults.link_drop``), or
    #: None for one that handles a down edge.
    link_drop_refusal: str | None = "does not say how it stays correct when a message is dropped"
    #: The order(s) in which the algorithm's own paper(s) write it (``overlap``, ``step_first``);
    #: none for one without a gossip round (all-reduce, local SGD). gossip's default is
    #: ``overlap`` for every algorithm with an ``order`` key.
    paper_orders: tuple[Order, ...] = ("overlap",)

    def __init__(self, topology: Topology | Schedule, network: Network, workers: list[Worker],
                 options: Any = None, seed: int = 0) -> None:
        self.schedule = StaticSchedule(topology) if isinstance(topology, Topology) else topology
        self.network = network
        self.workers = workers
        self.options = self.Options() if options is None else options
        self.seed = seed
        self.optimizer_s = 0.0  # wall time spent in the local optimizer steps (not gossip)
        self.check_topology(self.schedule, self.options.name)
        if network.faults is not None:
            self.check_link_drop(network.faults.link_drop, self.options.name)

    @classmethod
    def check_topology(cls, schedule: Schedule, name: str) -> None:
        """Refuse a directed ``schedule`` unless the algorithm handles one, and a time-varying one
        when the algorithm's state is tied to one fixed W."""
        if not cls.accepts_directed and schedule(0).directed:
            raise ValueError(f"name: {name} needs an undirected topology with a symmetric, doubly stochastic W; "
                             f"{schedule(0).name} is directed (push-sum on directed graphs: name sgp)")
        if cls.requires_static and not schedule.is_static:
            raise ValueError(f"name: {name} keeps state mixed with one fixed W and needs a static "
                             f"topology; {schedule!r} changes every step")

    @classmethod
    def check_link_drop(cls, link_drop: float, name: str) -> None:
        """Refuse ``faults.link_drop > 0`` with one line saying why, unless the algorithm handles it."""
        if link_drop > 0 and cls.link_drop_refusal is not None:
            raise ValueError(f"link_drop: {name} {cls.link_drop_refusal}, so it needs link_drop 0")

    @classmethod
    def step_events(cls, options: Any) -> tuple[str, ...]:
        """What one step does, in order, for the simulated clock's dry run: ``"compute"`` (the
        gradients), ``"round"`` (a gossip round), ``"collective"`` (an all-reduce). By default one
        of each of the first two, in the options' ``order`` (``step_first`` where they have none)."""
        return order_events(getattr(options, "order", "step_first"))

    @classmethod
    def order_summary(cls, options: Any) -> str:
        """The dry run's line: the order that will run, and its paper's."""
        if not cls.paper_orders:
            return "no gossip round"
        order = getattr(options, "order", None)
        if order is None:
            return f"{cls.paper_orders[0]} (its only order, its paper's)"
        if order in cls.paper_orders:
            return f"{order} (its paper's order)"
        return f"{order} (its paper's is {' or '.join(cls.paper_orders)})"

    @abstractmethod
    def step(self, t: int, lr: float | None, compute_gradients: Callable[[], None]) -> None:
        """Run training step ``t``: call ``compute_gradients()`` exactly once (it fills every local
        worker's ``grads`` at its current ``params``), communicate, and update ``params`` in place
        (with learning rate ``lr``; ``None`` leaves the optimizers' own)."""

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

    # --- what the run measures ----------------------------------------------------------------

    def averaged_part(self, worker: Worker) -> torch.Tensor:
        """What ``worker`` contributes to the averaged model ``x̄``: its model, or for push-sum the
        numerator whose average the mixing preserves."""
        return worker.params

    def averaged_params(self) -> torch.Tensor:
        """The averaged model ``x̄ = 1/n Σ_i`` :meth:`averaged_part` over every worker of the job (a
        collective: every process must call it)."""
        return self.network.mean_over_workers([self.averaged_part(w) for w in self.workers])

    def consensus_distance(self, mean: torch.Tensor) -> float:
        """``1/n Σ_i ‖x_i − x̄‖²`` over every worker of the job, with ``x_i`` the model a worker
        evaluates (a collective)."""
        distances = torch.stack([(w.params - mean).pow(2).sum() for w in self.workers])
        return self.network.gather_per_worker(distances).mean().item()

    # --- helpers shared by the algorithms -----------------------------------------------------

    def local_step(self, lr: float | None, clip: bool = True) -> None:
        """``x_i ← opt_i(x_i, g_i)`` for every local worker: clip ``g_i`` (unless ``clip`` is
        false: it was clipped already), write ``lr`` into the optimizer's parameter groups (unless
        it is ``None``), then the optimizer's step."""
        start = time.perf_counter()
        for w in self.workers:
            if clip:
                w.clip_grads_()
            if lr is not None:
                for group in w.optimizer.param_groups:
                    group["lr"] = lr
            w.optimizer.step()
        self.optimizer_s += time.perf_counter() - start

    def gradient_step(self, lr: float | None, compute_gradients: Callable[[], None]) -> None:
        """The gradients at the current parameters, then :meth:`local_step`."""
        compute_gradients()
        self.local_step(lr)

    def surviving(self, topology: Topology, t: int, round_index: int = 0) -> Topology:
        """``topology`` without the edges that are down in this round (:mod:`gossip.comm.faults`)."""
        faults = self.network.faults
        return topology if faults is None else faults.surviving(topology, t, round_index)

    def send_to_neighbours(self, topology: Topology, messages: dict[int, torch.Tensor]) -> PendingRound:
        """Send each local worker's ``messages[i]`` to all its (out-)neighbours; every worker's
        message has the same size and dtype (the models are identical), which sizes the receive
        buffers of what arrives from its in-neighbours."""
        outbox, expected = {}, {}
        for i, message in messages.items():
            for j in topology.out_neighbors(i):
                outbox[(i, j)] = message
            for j in topology.in_neighbors(i):
                expected[(j, i)] = (message.numel(), message.dtype)
        return self.network.start(outbox, expected)

    @staticmethod
    def mix(topology: Topology, i: int, own: torch.Tensor, inbox: dict[tuple[int, int], torch.Tensor]) -> torch.Tensor:
        """``Σ_j w_ij x_j`` over ``i`` and its (in-)neighbours ``j``, in sorted order (a new tensor)."""
        mixed = own * topology.weight(i, i)
        for j in topology.in_neighbors(i):
            mixed.add_(inbox[(j, i)], alpha=topology.weight(i, j))
        return mixed


@dataclass
class GossipOptions:
    """The key every gossiping algorithm shares: the order of its gossip and its local step."""

    order: Order = option("overlap", help="overlap: gossip x^t and apply it with the gradient step "
                                          "taken at x^t (the PowerGossip paper's Algorithm 1); "
                                          "step_first: local step, then gossip the stepped model "
                                          "(the Choco and DeepSqueeze papers' form)")


class GossipAlgorithm(Algorithm):
    """An algorithm made of a gossip exchange and a local optimizer step, in ``options.order``.

    - ``overlap``: the messages of ``x^t`` are posted, the gradients at ``x^t`` are computed while
      they travel, the gossip correction is applied, then the local step:
      ``x^{t+1} = opt(x^t + gossip(x^t), g(x^t))``.
    - ``step_first``: ``x^{t+½} = opt(x^t, g(x^t))``, then ``x^{t+1} = x^{t+½} + gossip(x^{t+½})``.

    A subclass says how its exchange starts (:meth:`start_gossip`, from the current parameters)
    and how what arrives is applied (:meth:`finish_gossip`, in place).
    """

    def step(self, t: int, lr: float | None, compute_gradients: Callable[[], None]) -> None:
        topology = self.schedule(t)
        if self.options.order == "overlap":
            pending = self.start_gossip(t, topology)
            compute_gradients()
            self.finish_gossip(t, topology, pending)
            self.local_step(lr)
        else:
            self.gradient_step(lr, compute_gradients)
            self.finish_gossip(t, topology, self.start_gossip(t, topology))

    @abstractmethod
    def start_gossip(self, t: int, topology: Topology) -> Any:
        """Post the messages of step ``t`` made from the current parameters; what comes back is
        handed to :meth:`finish_gossip`."""

    @abstractmethod
    def finish_gossip(self, t: int, topology: Topology, pending: Any) -> None:
        """Wait for the messages and apply the gossip correction to every local worker's params."""
