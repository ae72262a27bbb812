"""ChocoSGD (Koloskova, Stich, Jaggi 2019) in its memory-efficient form.

Each worker keeps its public copy ``x̂_i`` (what its neighbours know of it) and the mixed public
copies ``s_i = Σ_{j∈N(i)∪{i}} w_ij x̂_j``, instead of one replica per neighbour. The gossip of a
vector ``x_i`` (``x_i^t`` in the ``overlap`` order, ``x_i^{t+½} = opt_i(x_i^t, g_i)`` in
``step_first``, the Choco paper's own form):

    q_i  = Q(x_i − x̂_i)                        # sent to every neighbour
    x̂_i += q_i
    s_i  += w_ii q_i + Σ_{j∈N(i)} w_ij q_j
    x_i  += γ (s_i − x̂_i)

and in the ``overlap`` order the local step ``opt_i(·, g_i(x_i^t))`` follows. ``s_i`` sums with
the weights of one fixed ``W``, so the topology must be static.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from gossip.algorithms.compressed import CodecOptions, CompressedAlgorithm, PendingMessages
from gossip.registry import option
from gossip.algorithms.worker import Worker
from topologies import Topology


@dataclass
class ChocoOptions(CodecOptions):
    """ChocoSGD: compressed differences to public copies, consensus step size ``gamma``."""

    name: Literal["choco"] = option("choco", help="ChocoSGD with a compressed public copy per worker")
    gamma: float = option(0.45, help="consensus step size γ (tuned per codec and topology)", gt=0, le=1)


class Choco(CompressedAlgorithm):
    Options = ChocoOptions
    paper_orders = ("step_first",)
    requires_static = True
    link_drop_refusal = ("sums its neighbours' public copies from every message they send; one lost "
                         "message leaves those sums wrong for good")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.public = self.zeros()
        self.mixed_public = self.zeros()

    def start_gossip(self, t: int, topology: Topology) -> PendingMessages:
        differences = {w.id: w.params - self.public[w.id] for w in self.workers}
        return self.gossip.start(topology, t, differences)

    def finish_gossip(self, t: int, topology: Topology, pending: PendingMessages) -> None:
        own, inbox = pending.wait()
        for w in self.workers:
            self.public[w.id].add_(own[w.id])
            self.mixed_public[w.id].add_(self.mix(topology, w.id, own[w.id], inbox))
            w.params.add_(self.mixed_public[w.id] - self.public[w.id], alpha=self.options.gamma)

    def worker_state(self, worker: Worker) -> dict[str, torch.Tensor]:
        return {"public": self.public[worker.id], "mixed_public": self.mixed_public[worker.id]}

    def load_worker_state(self, worker: Worker, state: dict[str, torch.Tensor]) -> None:
        self.public[worker.id].copy_(state["public"])
        self.mixed_public[worker.id].copy_(state["mixed_public"])
