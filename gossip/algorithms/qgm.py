"""Quasi-global momentum (QG-DSGDm; Lin, Karimireddy, Stich & Jaggi 2021).

D-PSGD with heavy-ball momentum whose buffer is built from the change of the worker's mixed
model instead of its own gradients, so that the momentum points where the whole network moves:

    m_i^t       = β m̂_i^{t-1} + g_i(x_i^t)                      (m̂^{-1} = 0)
    step_first: x_i^{t+1} = Σ_j w_ij (x_j^t − η m_j^t)           (the paper's Algorithm 1)
    overlap:    x_i^{t+1} = Σ_j w_ij x_j^t − η m_i^t
    d_i^t       = (x_i^t − x_i^{t+1}) / η                          (0 when η = 0)
    m̂_i^t       = μ m̂_i^{t-1} + (1 − μ) d_i^t

The local optimizer must be ``sgd`` with ``momentum`` β > 0 (and dampening 0): before each step
its momentum buffers are set to ``m̂^{t-1}``, so that torch's SGD computes ``m^t`` (with its weight
decay added to the gradient first, and its Nesterov form ``g + β m^t`` if ``nesterov``). ``mu``
defaults to β, as in the paper's experiments. The extra state is ``m̂_i``; the bytes are D-PSGD's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional

import torch
from torch import nn

from gossip.algorithms.dpsgd import DPSGD
from gossip.algorithms.base import GossipOptions
from gossip.algorithms.optim import build_optimizer
from gossip.registry import option
from gossip.algorithms.worker import Worker


@dataclass
class QGMOptions(GossipOptions):
    """Quasi-global momentum: the optimizer's momentum buffer follows the mixed model's change."""

    name: Literal["qgm"] = option("qgm", help="quasi-global momentum (D-PSGD; needs optimizer sgd with momentum)")
    mu: Optional[float] = option(None, help="averaging factor μ of the quasi-global buffer "
                                            "(default: the optimizer's momentum β)", ge=0, lt=1)

    def check(self, config: Any) -> None:
        """Refuse, before the run starts, a configured optimizer without heavy-ball momentum."""
        check_heavy_ball(build_optimizer(config.optimizer, nn.Linear(1, 1)), self.name)


class QGM(DPSGD):
    Options = QGMOptions
    paper_orders = ("step_first",)
    link_drop_refusal = "is defined on D-PSGD with every message delivered"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for w in self.workers:
            check_heavy_ball(w.optimizer, self.options.name)
        self.momentum = {w.id: torch.zeros_like(w.params) for w in self.workers}  # m̂
        self._views = {w.id: list(self.momentum[w.id].split([v.numel() for v in w.views])) for w in self.workers}
        self._parameters = {w.id: [p for p in w.model.parameters() if p.requires_grad] for w in self.workers}

    def step(self, t: int, lr: float | None, compute_gradients: Callable[[], None]) -> None:
        before = {w.id: w.params.clone() for w in self.workers}
        for w in self.workers:
            self._seed_buffers(w)
        super().step(t, lr, compute_gradients)
        for w in self.workers:
            group = w.optimizer.param_groups[0]
            mu = group["momentum"] if self.options.mu is None else self.options.mu
            eta = group["lr"]
            change = before[w.id].sub_(w.params).div_(eta) if eta else before[w.id].zero_()
            self.momentum[w.id].mul_(mu).add_(change, alpha=1 - mu)

    def _seed_buffers(self, worker: Worker) -> None:
        """Set the optimizer's momentum buffers to ``m̂`` (torch creates ``g`` itself the first time,
        which is ``β · 0 + g``)."""
        state = worker.optimizer.state
        buffers = [state[p].get("momentum_buffer") for p in self._parameters[worker.id]]
        if all(b is not None for b in buffers):
            shaped = [v.view_as(b) for v, b in zip(self._views[worker.id], buffers)]
            torch._foreach_copy_(buffers, shaped)
        elif any(b is not None for b in buffers) or bool(self.momentum[worker.id].any()):
            raise RuntimeError("qgm: the optimizer lost some momentum buffers; it must be the worker's own sgd")

    def worker_state(self, worker: Worker) -> dict[str, torch.Tensor]:
        return {"momentum": self.momentum[worker.id]}

    def load_worker_state(self, worker: Worker, state: dict[str, torch.Tensor]) -> None:
        self.momentum[worker.id].copy_(state["momentum"])


def check_heavy_ball(optimizer: torch.optim.Optimizer, name: str) -> None:
    """Refuse an optimizer that is not torch's SGD with momentum > 0 and dampening 0."""
    groups = optimizer.param_groups
    if not isinstance(optimizer, torch.optim.SGD) or any(g["momentum"] <= 0 for g in groups):
        what = type(optimizer).__name__ + ("" if not isinstance(optimizer, torch.optim.SGD) else " with momentum 0")
        raise ValueError(f"name: {name} replaces the momentum buffer of the optimizer, which must be "
                         f"sgd with momentum > 0 (its β); got {what}")
    if any(g["dampening"] != 0 for g in groups):
        raise ValueError(f"name: {name} needs sgd with dampening 0; got dampening {groups[0]['dampening']}")
