"""DeepSqueeze (Tang et al. 2019): compressed gossip of the parameters with error feedback.

The gossip of a vector ``x_i`` (``x_i^t`` in the ``overlap`` order, ``x_i^{t+½} = opt_i(x_i^t,
g_i)`` in ``step_first``, the DeepSqueeze paper's own form):

    v_i  = x_i + δ_i
    c_i  = C(v_i)                                         # sent to every neighbour
    δ_i  = v_i − c_i                                      # the error memory
    x_i += γ Σ_{j∈N(i)∪{i}} (w_ij − [i = j]) c_j

and in the ``overlap`` order the local step ``opt_i(·, g_i(x_i^t))`` follows. A message is used in
the step it is sent and nowhere else, so an edge that is down (``faults.link_drop``) simply drops
out of that step's sum: its weight moves onto the self-weights, as in D-PSGD.
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
class DeepSqueezeOptions(CodecOptions):
    """DeepSqueeze: compressed parameters with an error memory, consensus step size ``gamma``."""

    name: Literal["deepsqueeze"] = option("deepsqueeze", help="DeepSqueeze: error-compensated compressed gossip")
    gamma: float = option(0.01, help="consensus step size γ (tuned per codec and topology)", gt=0, le=1)


class DeepSqueeze(CompressedAlgorithm):
    Options = DeepSqueezeOptions
    paper_orders = ("step_first",)
    link_drop_refusal = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.error = self.zeros()

    def start_gossip(self, t: int, topology: Topology) -> tuple[dict[int, torch.Tensor], PendingMessages]:
        compensated = {w.id: w.params + self.error[w.id] for w in self.workers}
        return compensated, self.gossip.start(self.surviving(topology, t), t, compensated)

    def finish_gossip(self, t: int, topology: Topology,
                      pending: tuple[dict[int, torch.Tensor], PendingMessages]) -> None:
        compensated, messages = pending
        own, inbox = messages.wait()
        topology = self.surviving(topology, t)
        for w in self.workers:
            torch.sub(compensated[w.id], own[w.id], out=self.error[w.id])
            w.params.add_(self.mix(topology, w.id, own[w.id], inbox) - own[w.id], alpha=self.options.gamma)

    def worker_state(self, worker: Worker) -> dict[str, torch.Tensor]:
        return {"error": self.error[worker.id]}

    def load_worker_state(self, worker: Worker, state: dict[str, torch.Tensor]) -> None:
        self.error[worker.id].copy_(state["error"])
