"""D-PSGD with a mixing step size γ, as a user's own algorithm:

    x_i ← x_i + γ (Σ_j w_ij x_j − x_i)

γ = 1 is D-PSGD; a smaller γ mixes more gently (the matrix (1 − γ) I + γ W is doubly stochastic
too, so the workers' average is preserved). Every worker sends its full parameters to each
neighbour once per step, as D-PSGD does. Run it with ``examples/my_algorithm/config.yaml``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gossip.algorithms.base import GossipAlgorithm, GossipOptions
from gossip.comm.messages import PendingRound
from gossip.registry import option
from topologies import Topology


@dataclass
class MixingDPSGDOptions(GossipOptions):
    """The options of :class:`MixingDPSGD` (``order`` comes from :class:`GossipOptions`)."""

    name: str = option("examples.my_algorithm.algorithm:MixingDPSGD", help="the class, as module.path:Name")
    gamma: float = option(0.5, help="mixing step size γ (1: plain D-PSGD)", gt=0, le=1)


class MixingDPSGD(GossipAlgorithm):
    """D-PSGD whose gossip moves each worker a fraction ``gamma`` of the way to its neighbours' mix."""

    Options = MixingDPSGDOptions

    @classmethod
    def bytes_per_step(cls, options: MixingDPSGDOptions, shapes: list[torch.Size], topology: Topology,
                       worker: int) -> int:
        """One fp32 copy of the parameters to every neighbour."""
        return topology.degree(worker) * 4 * sum(math.prod(shape) for shape in shapes)

    def start_gossip(self, t: int, topology: Topology) -> PendingRound:
        """Post every local worker's parameters to its neighbours."""
        return self.send_to_neighbours(topology, {w.id: w.params for w in self.workers})

    def finish_gossip(self, t: int, topology: Topology, pending: PendingRound) -> None:
        """``x_i ← x_i + γ (Σ_j w_ij x_j − x_i)``, every mix computed before any ``x_i`` changes."""
        inbox = pending.wait()
        mixed = [self.mix(topology, w.id, w.params, inbox) for w in self.workers]
        for w, y in zip(self.workers, mixed):
            w.params.lerp_(y, self.options.gamma)
