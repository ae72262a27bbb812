"""Moniqua (Lu & De Sa 2020): gossip of the parameters with b-bit modulo quantisation.

With levels ``δ = 1/(2^b − 1)`` apart on ``[−½, ½]``, ``B = 2θ/(1 − 2δ)`` and ``cmod_a`` the
centred modulo into ``[−a/2, a/2)``, the gossip of a vector ``x_i`` (``x_i^t`` in the
``overlap`` order, the paper's, ``x_i^{t+½} = opt_i(x_i^t, g_i)`` in ``step_first``):

    q_i  = Qstoch(cmod_1(x_i / B))                     # b bits per entry to every neighbour
    ê_i  = B q_i − cmod_B(x_i)                         # own quantisation error, never sent
    x̂_{j|i} = cmod_B(B q_j − x_i) + x_i                # exact up to B·δ while |x_j − x_i| < θ
    x_i += γ Σ_{j∈N(i)} w_ij (x̂_{j|i} − (x_i + ê_i))

and in the ``overlap`` order the local step ``opt_i(·, g_i(x_i^t))`` follows, as in D-PSGD. A message
is used in the step it is sent and nowhere else, so an edge that is down (``faults.link_drop``)
simply drops out of that step's sum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from gossip.algorithms import compression
from gossip.algorithms.base import GossipOptions
from gossip.algorithms.compressed import CompressedAlgorithm, PendingMessages
from gossip.registry import option
from topologies import Topology


@dataclass
class MoniquaOptions(GossipOptions):
    """Moniqua: modulo-quantised gossip; ``theta`` must bound ‖x_i − x_j‖_∞ between neighbours."""

    name: Literal["moniqua"] = option("moniqua", help="Moniqua: b-bit modulo-quantised gossip")
    theta: float = option(0.25, help="bound θ on ‖x_i − x_j‖_∞ between neighbours", gt=0)
    bits: int = option(2, help="bits b per entry (2^b quantisation levels)", ge=2, le=8)
    gamma: float = option(5e-3, help="consensus step size γ", gt=0, le=1)

    def build_codec(self) -> compression.Codec:
        return compression.Moniqua(bits=self.bits)

    @property
    def modulus(self) -> float:
        """``B = 2θ / (1 − 2δ)``: the period of the modulo, wide enough that a neighbour within θ
        is recovered despite a quantisation error below ``B·δ``."""
        delta = self.build_codec().delta
        return 2 * self.theta / (1 - 2 * delta)


def centred_mod(z: torch.Tensor, period: float) -> torch.Tensor:
    """``cmod_a(z)``: ``z`` shifted by a multiple of ``period`` into ``[−period/2, period/2)``."""
    return torch.remainder(z + period / 2, period) - period / 2


def neighbour_offset(received: torch.Tensor, own: torch.Tensor, modulus: float) -> torch.Tensor:
    """``x̂_{j|i} − x_i = cmod_B(B q_j − x_i)``: how far a neighbour's vector is from the receiver's
    own ``x_i``, from its quantised residue ``q_j`` (decoded, in ``[−½, ½]``)."""
    return centred_mod(modulus * received - own, modulus)


class Moniqua(CompressedAlgorithm):
    Options = MoniquaOptions
    link_drop_refusal = None

    def start_gossip(self, t: int, topology: Topology) -> tuple[dict[int, torch.Tensor], PendingMessages]:
        residues = {w.id: centred_mod(w.params / self.options.modulus, 1.0) for w in self.workers}
        return residues, self.gossip.start(self.surviving(topology, t), t, residues)

    def finish_gossip(self, t: int, topology: Topology,
                      pending: tuple[dict[int, torch.Tensor], PendingMessages]) -> None:
        residues, messages = pending
        own, inbox = messages.wait()
        topology = self.surviving(topology, t)
        modulus = self.options.modulus
        for w in self.workers:
            x = w.params
            own_error = (own[w.id] - residues[w.id]).mul_(modulus)          # ê_i
            drift = torch.zeros_like(x)
            for j in topology.neighbors(w.id):
                # x̂_{j|i} − (x_i + ê_i)
                offset = neighbour_offset(inbox[(j, w.id)], x, modulus)
                drift.add_(offset.sub_(own_error), alpha=topology.weight(w.id, j))
            x.add_(drift, alpha=self.options.gamma)
