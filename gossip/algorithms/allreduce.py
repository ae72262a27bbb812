"""The centralized reference: average the gradients of all workers every step, then ``opt_i``.

``optimizer.clip_scope`` says what is clipped: each worker's gradient before the average
(``worker``, the default, as the PowerGossip authors' code does) or the average (``mean``).

Bytes are counted as a ring all-reduce sends them: ``2 (n − 1) / n`` × the gradient's bytes per
worker per step.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Callable, Literal

import torch

from gossip.algorithms.base import Algorithm
from gossip.registry import option
from topologies import Topology


@dataclass
class AllReduceOptions:
    """All-reduce SGD has no hyperparameters of its own."""

    name: Literal["allreduce"] = option("allreduce", help="centralized SGD with averaged gradients")


class AllReduce(Algorithm):
    Options = AllReduceOptions
    paper_orders = ()
    link_drop_refusal = "averages with a collective, which has no gossip links to drop"

    @classmethod
    def bytes_per_step(cls, options: AllReduceOptions, shapes: list[torch.Size], topology: Topology, worker: int) -> int:
        return 2 * (topology.n - 1) * 4 * sum(math.prod(shape) for shape in shapes) // topology.n

    @classmethod
    def step_events(cls, options: AllReduceOptions) -> tuple[str, ...]:
        return ("compute", "collective")

    def step(self, t: int, lr: float | None, compute_gradients: Callable[[], None]) -> None:
        compute_gradients()
        clip_each = self.workers[0].clip_scope == "worker"
        if clip_each:
            for w in self.workers:
                w.clip_grads_()
        mean = self.network.mean_over_workers([w.grads for w in self.workers])
        n = self.network.n
        for w in self.workers:
            self.network.count_bytes(w.id, 2 * (n - 1) * w.grads.numel() * w.grads.element_size() // n)
            w.grads.copy_(mean)
        self.local_step(lr, clip=not clip_each)
