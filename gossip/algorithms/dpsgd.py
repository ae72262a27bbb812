"""D-PSGD (Lian et al. 2017; "DP-SGD" in the PowerGossip paper).

    overlap:     g_i = ∇F_i(x_i^t);  y_i = Σ_j w_ij x_j^t;  x_i^{t+1} = opt_i(y_i, g_i)
    step_first:  x_i^{t+½} = opt_i(x_i^t, g_i);  x_i^{t+1} = Σ_j w_ij x_j^{t+½}

In the ``overlap`` order the gossip of ``x^t`` is posted before the backward pass and awaited
after it, so that the messages travel while the gradients are computed. An edge that is down
(``faults.link_drop``) carries nothing and its weight moves onto the two endpoints' self-weights.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Literal

import torch

from gossip.algorithms.base import GossipAlgorithm, GossipOptions
from gossip.registry import option
from gossip.comm.messages import PendingRound
from topologies import Topology


@dataclass
class DPSGDOptions(GossipOptions):
    """D-PSGD has no hyperparameters of its own: the full parameters go to every neighbour."""

    name: Literal["dpsgd"] = option("dpsgd", help="D-PSGD: exact gossip of the full parameters")


class DPSGD(GossipAlgorithm):
    Options = DPSGDOptions
    link_drop_refusal = None

    @classmethod
    def bytes_per_step(cls, options: DPSGDOptions, shapes: list[torch.Size], topology: Topology, worker: int) -> int:
        return topology.degree(worker) * 4 * sum(math.prod(shape) for shape in shapes)

    def start_gossip(self, t: int, topology: Topology) -> PendingRound:
        return self.send_to_neighbours(self.surviving(topology, t), {w.id: w.params for w in self.workers})

    def finish_gossip(self, t: int, topology: Topology, pending: PendingRound) -> None:
        inbox = pending.wait()
        topology = self.surviving(topology, t)
        mixed = [self.mix(topology, w.id, w.params, inbox) for w in self.workers]
        for w, y in zip(self.workers, mixed):
            w.params.copy_(y)
