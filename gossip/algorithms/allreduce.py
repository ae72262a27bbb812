"""The centralized reference: average the gradients of all workers every step, then ``opt_i``.

Bytes are counted as a ring all-reduce sends them: ``2 (n − 1) / n`` × the gradient's bytes per
worker per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

from gossip.algorithms.base import Algorithm
from gossip.config import option


@dataclass
class AllReduceOptions:
    """All-reduce SGD has no hyperparameters of its own."""

    name: Literal["allreduce"] = option("allreduce", help="centralized SGD with averaged gradients")


class AllReduce(Algorithm):
    Options = AllReduceOptions

    def step(self, t: int, lr: float, compute_gradients: Callable[[], None]) -> None:
        compute_gradients()
        mean = self.network.mean_over_workers([w.grads for w in self.workers])
        n = self.network.n
        for w in self.workers:
            self.network.count_bytes(w.id, 2 * (n - 1) * w.grads.numel() * w.grads.element_size() // n)
            w.grads.copy_(mean)
            w.optimizer.step(w.params, w.grads, lr)
