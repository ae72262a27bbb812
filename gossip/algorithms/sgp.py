"""Stochastic gradient push (SGP; Assran, Loizou, Ballas & Rabbat 2019): push-sum gossip, which
averages over directed and time-varying graphs.

A directed topology's W is column-stochastic (each sender splits its vector over itself and its
out-neighbours), so plain gossip would converge to a weighted average, not the average. Push-sum
also mixes a scalar weight ``w_i`` (1 at the start) with the same W, and the workers' models are
the de-biased ``z_i = x_i / w_i``, which converge to the exact average:

    step_first:  x_i^{t+½} = opt_i(x_i^t, g_i(z_i^t));   x_i^{t+1} = Σ_j w_ij x_j^{t+½}
    overlap:     x_i^{t+1} = opt_i(Σ_j w_ij x_j^t, g_i(z_i^t))
    both:        w_i^{t+1} = Σ_j w_ij w_j^t;   z_i^{t+1} = x_i^{t+1} / w_i^{t+1}

``step_first`` is the paper's Algorithm 1. A worker's ``params`` hold ``z_i`` between steps: the
gradients are taken there and that is what is evaluated as the worker's own model and
checkpointed, with ``w_i`` as the algorithm's state (``x_i = z_i w_i`` is formed for the step).
The averaged model is the average of the numerators, ``x̄ = 1/n Σ_i x_i``: it is what push-sum
preserves and what the paper's analysis tracks; the mean of the ``z_i`` differs from it while the
weights differ from 1 (by up to 0.014 within 30 steps on a random digraph). On an undirected topology, or
a directed one in which every node has the same in- and out-degree (``directed_exponential``, its
one-peer schedule), W is doubly stochastic: the weights stay 1 and SGP is D-PSGD; where out-degrees
differ (``directed_erdos_renyi``) they move. Each message is ``x_i`` and ``w_i``:
``out-degree × 4 × (parameters + 1)`` bytes per step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch

from gossip.algorithms.base import Algorithm, GossipOptions
from gossip.registry import option
from gossip.algorithms.worker import Worker
from topologies import Topology


@dataclass
class SGPOptions(GossipOptions):
    """Stochastic gradient push has no hyperparameters of its own."""

    name: Literal["sgp"] = option("sgp", help="stochastic gradient push: push-sum gossip on directed or "
                                              "time-varying graphs (de-biased models x/w)")


class SGP(Algorithm):
    Options = SGPOptions
    paper_orders = ("step_first",)
    accepts_directed = True
    link_drop_refusal = "loses the mass of a dropped message, after which x/w no longer averages"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.weight = {w.id: torch.ones(1, dtype=w.params.dtype, device=w.params.device) for w in self.workers}

    @classmethod
    def bytes_per_step(cls, options: SGPOptions, shapes: list[torch.Size], topology: Topology, worker: int) -> int:
        return topology.degree(worker) * 4 * (sum(math.prod(shape) for shape in shapes) + 1)

    def step(self, t: int, lr: float | None, compute_gradients: Callable[[], None]) -> None:
        topology = self.schedule(t)
        if self.options.order == "overlap":
            pending, messages = self.push(topology, {w.id: w.params * self.weight[w.id] for w in self.workers})
            compute_gradients()
            self.receive(topology, pending, messages)
            self.local_step(lr)
        else:
            compute_gradients()
            for w in self.workers:
                w.params.mul_(self.weight[w.id])
            self.local_step(lr)
            self.receive(topology, *self.push(topology, {w.id: w.params for w in self.workers}))
        for w in self.workers:
            w.params.div_(self.weight[w.id])

    def averaged_part(self, worker: Worker) -> torch.Tensor:
        """The push-sum numerator ``x_i = w_i z_i``."""
        return worker.params * self.weight[worker.id]

    def push(self, topology: Topology, biased: dict[int, torch.Tensor]) -> tuple[Any, dict[int, torch.Tensor]]:
        """Post ``[x_i, w_i]`` to every out-neighbour; returns the round and the messages."""
        messages = {i: torch.cat([x, self.weight[i]]) for i, x in biased.items()}
        return self.send_to_neighbours(topology, messages), messages

    def receive(self, topology: Topology, pending: Any, messages: dict[int, torch.Tensor]) -> None:
        """``params ← Σ_j w_ij x_j`` and ``w_i ← Σ_j w_ij w_j`` (``params`` hold ``x`` until the division)."""
        inbox = pending.wait()
        for w in self.workers:
            mixed = self.mix(topology, w.id, messages[w.id], inbox)
            w.params.copy_(mixed[:-1])
            self.weight[w.id].copy_(mixed[-1:])

    def worker_state(self, worker: Worker) -> dict[str, torch.Tensor]:
        return {"weight": self.weight[worker.id]}

    def load_worker_state(self, worker: Worker, state: dict[str, torch.Tensor]) -> None:
        self.weight[worker.id].copy_(state["weight"])
