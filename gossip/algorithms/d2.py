"""D² (Tang, Lian, Yan, Zhang & Liu 2018): D-PSGD corrected by the previous iterate and gradient.

    x_i^1     = Σ_j w_ij (x_j^0 − η g_j(x_j^0))
    x_i^{t+1} = Σ_j w_ij (2 x_j^t − x_j^{t-1} − η g_j(x_j^t) + η g_j(x_j^{t-1}))

which is ``x_i^{t+½} = u_i^t + x_i^t − u_i^{t-1}`` with ``u_i^t = opt_i(x_i^t, g_i(x_i^t))`` the
stepped model (``x − η g`` for SGD) and ``u_i^{-1} = x_i^0``, then ``x_i^{t+1} = Σ_j w_ij
x_j^{t+½}``. The correction cancels the workers' different local optima: with exact gradients and
a constant step size the workers reach the exact optimum of the average objective. Another
optimizer than SGD puts its own step in place of ``η g`` (a generalisation; the paper's rule is
SGD's).

The paper's step size is constant. Under a schedule the correction is scaled by ``η_t / η_{t-1}``,
as in the authors' learning-rate-aware variant (epfml/quasi-global-momentum, ``decentralized_d2_v1``):

    x_i^{t+½} = u_i^t + (η_t / η_{t-1}) (x_i^t − u_i^{t-1})
              = x_i^t − η_t g_i^t + η_t g_i^{t-1} + (η_t / η_{t-1}) (x_i^t − x_i^{t-1})   (SGD)

which is the rule above whenever ``η_t = η_{t-1}`` (a step that follows one at ``η = 0`` is not
scaled). Unscaled, every change of η leaves a bias
``(η_{t-1} − η_t) g_i(x*)`` in the iterate, and the exact optimum is lost. The extra state is
``u_i^{t-1}`` and ``η_{t-1}``; the bytes are D-PSGD's.

D² needs one fixed W whose smallest eigenvalue is above −1/3 (checked at the start); any graph's
lazy W, ``(W + I) / 2`` (``topology.lazy: true``), has none below 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np
import torch

from gossip.algorithms.base import Algorithm
from gossip.registry import option
from gossip.algorithms.worker import Worker
from topologies import Schedule, Topology

#: D²'s convergence needs every eigenvalue of W above this (Tang et al. 2018, Assumption 1). At
#: exactly −1/3 (a ring with weights 1/3) its correction oscillates without contracting; a W within
#: ``BOUNDARY_TOLERANCE`` of it counts as on the boundary and is refused too.
SMALLEST_EIGENVALUE = -1 / 3
BOUNDARY_TOLERANCE = 1e-9


@dataclass
class D2Options:
    """D² has no hyperparameters of its own: the full (corrected) parameters go to every neighbour."""

    name: Literal["d2"] = option("d2", help="D²: D-PSGD corrected by the previous iterate and gradient "
                                            "(needs W's smallest eigenvalue > -1/3)")


class D2(Algorithm):
    Options = D2Options
    paper_orders = ("step_first",)
    requires_static = True
    link_drop_refusal = "corrects with the previous step's mixing, which must be the same fixed W"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.previous_stepped = {w.id: w.params.clone() for w in self.workers}  # u^{t-1}, u^{-1} = x^0
        self.previous_lr = {w.id: 0.0 for w in self.workers}  # η_{t-1}; 0 before the first step

    @classmethod
    def check_topology(cls, schedule: Schedule, name: str) -> None:
        """Also refuse a W with an eigenvalue at or below −1/3, naming it."""
        super().check_topology(schedule, name)
        topology = schedule(0)
        smallest = float(np.linalg.eigvalsh(topology.W)[0])
        if smallest <= SMALLEST_EIGENVALUE + BOUNDARY_TOLERANCE:
            raise ValueError(f"name: {name} needs the smallest eigenvalue of W above -1/3, but "
                             f"{topology.name}'s is {smallest:.4g}; set topology.lazy: true (W becomes (W + I)/2, "
                             f"whose eigenvalues are >= 0), or choose a graph whose W passes (an odd ring, the "
                             f"complete graph)")

    @classmethod
    def bytes_per_step(cls, options: D2Options, shapes: list[torch.Size], topology: Topology, worker: int) -> int:
        return topology.degree(worker) * 4 * sum(math.prod(shape) for shape in shapes)

    def step(self, t: int, lr: float | None, compute_gradients: Callable[[], None]) -> None:
        topology = self.schedule(t)
        current = {w.id: w.params.clone() for w in self.workers}
        self.gradient_step(lr, compute_gradients)
        for w in self.workers:
            stepped, previous = w.params.clone(), self.previous_stepped[w.id]
            step_lr = w.optimizer.param_groups[0]["lr"]
            previous_lr = self.previous_lr[w.id]
            scale = step_lr / previous_lr if previous_lr > 0 else 1.0  # x^t − u^{t-1} = 0 at t = 0
            w.params.add_(current[w.id].sub_(previous), alpha=scale)  # u^t + (η_t/η_{t-1})(x^t − u^{t-1})
            previous.copy_(stepped)
            self.previous_lr[w.id] = step_lr
        inbox = self.send_to_neighbours(topology, {w.id: w.params for w in self.workers}).wait()
        mixed = [self.mix(topology, w.id, w.params, inbox) for w in self.workers]
        for w, x in zip(self.workers, mixed):
            w.params.copy_(x)

    def worker_state(self, worker: Worker) -> dict[str, torch.Tensor]:
        return {"previous_stepped": self.previous_stepped[worker.id], "previous_lr": self.previous_lr[worker.id]}

    def load_worker_state(self, worker: Worker, state: dict[str, Any]) -> None:
        self.previous_stepped[worker.id].copy_(state["previous_stepped"])
        self.previous_lr[worker.id] = state["previous_lr"]
