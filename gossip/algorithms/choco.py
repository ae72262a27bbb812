"""ChocoSGD (Koloskova, Stich, Jaggi 2019) in its memory-efficient form.

Each worker keeps its public copy ``x̂_i`` (what its neighbours know of it) and the mixed public
copies ``s_i = Σ_{j∈N(i)∪{i}} w_ij x̂_j``, instead of one replica per neighbour:

    x_i^{t+½} = opt_i(x_i^t, g_i)
    q_i       = Q(x_i^{t+½} − x̂_i)                  # sent to every neighbour
    x̂_i      += q_i
    s_i       += w_ii q_i + Σ_{j∈N(i)} w_ij q_j
    x_i^{t+1} = x_i^{t+½} + γ (s_i − x̂_i)

``s_i`` sums with the weights of one fixed ``W``, so the topology must be static.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch

from gossip.algorithms.compressed import CodecOptions, CompressedAlgorithm
from gossip.registry import option
from gossip.worker import Worker
from topologies import Schedule


@dataclass
class ChocoOptions(CodecOptions):
    """ChocoSGD: compressed differences to public copies, consensus step size ``gamma``."""

    name: Literal["choco"] = option("choco", help="ChocoSGD with a compressed public copy per worker")
    gamma: float = option(0.45, help="consensus step size γ (tuned per codec and topology)", gt=0, le=1)

    def check(self, config: Any) -> None:
        super().check(config)
        require_static(config.topology.build(config.workers, config.seed), config.topology.name)


def require_static(schedule: Schedule, name: str) -> None:
    """Choco's ``s_i`` mixes with one fixed W: refuse a time-varying topology."""
    if not schedule.is_static:
        raise ValueError(f"name: choco keeps s_i = Σ_j w_ij x̂_j for a fixed W and needs a static "
                         f"topology; {name!r} changes every step")


class Choco(CompressedAlgorithm):
    Options = ChocoOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        require_static(self.schedule, repr(self.schedule))
        self.public = self.zeros()
        self.mixed_public = self.zeros()

    def step(self, t: int, lr: float, compute_gradients: Callable[[], None]) -> None:
        topology = self.schedule(t)
        compute_gradients()
        for w in self.workers:
            w.optimizer.step(w.params, w.grads, lr)
        differences = {w.id: w.params - self.public[w.id] for w in self.workers}
        own, inbox = self.gossip.start(topology, t, differences).wait()
        for w in self.workers:
            self.public[w.id].add_(own[w.id])
            self.mixed_public[w.id].add_(self.mix(topology, w.id, own[w.id], inbox))
            w.params.add_(self.mixed_public[w.id] - self.public[w.id], alpha=self.options.gamma)

    def worker_state(self, worker: Worker) -> dict[str, torch.Tensor]:
        return {"public": self.public[worker.id], "mixed_public": self.mixed_public[worker.id]}

    def load_worker_state(self, worker: Worker, state: dict[str, torch.Tensor]) -> None:
        self.public[worker.id].copy_(state["public"])
        self.mixed_public[worker.id].copy_(state["mixed_public"])
