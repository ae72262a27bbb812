"""DeepSqueeze (Tang et al. 2019): compressed gossip of the parameters with error feedback.

    x_i^{t+½} = opt_i(x_i^t, g_i)
    v_i       = x_i^{t+½} + δ_i
    c_i       = C(v_i)                                    # sent to every neighbour
    δ_i       = v_i − c_i                                 # the error memory
    x_i^{t+1} = x_i^{t+½} + γ Σ_{j∈N(i)∪{i}} (w_ij − [i = j]) c_j
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch

from gossip.algorithms.compressed import CodecOptions, CompressedAlgorithm
from gossip.registry import option
from gossip.worker import Worker


@dataclass
class DeepSqueezeOptions(CodecOptions):
    """DeepSqueeze: compressed parameters with an error memory, consensus step size ``gamma``."""

    name: Literal["deepsqueeze"] = option("deepsqueeze", help="DeepSqueeze: error-compensated compressed gossip")
    gamma: float = option(0.01, help="consensus step size γ (tuned per codec and topology)", gt=0, le=1)


class DeepSqueeze(CompressedAlgorithm):
    Options = DeepSqueezeOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.error = self.zeros()

    def step(self, t: int, lr: float, compute_gradients: Callable[[], None]) -> None:
        topology = self.schedule(t)
        compute_gradients()
        for w in self.workers:
            w.optimizer.step(w.params, w.grads, lr)
        compensated = {w.id: w.params + self.error[w.id] for w in self.workers}
        own, inbox = self.gossip.start(topology, t, compensated).wait()
        for w in self.workers:
            torch.sub(compensated[w.id], own[w.id], out=self.error[w.id])
            w.params.add_(self.mix(topology, w.id, own[w.id], inbox) - own[w.id], alpha=self.options.gamma)

    def worker_state(self, worker: Worker) -> dict[str, torch.Tensor]:
        return {"error": self.error[worker.id]}

    def load_worker_state(self, worker: Worker, state: dict[str, torch.Tensor]) -> None:
        self.error[worker.id].copy_(state["error"])
