"""Gradient tracking: DSGT (Pu & Nedić 2020) and DIGing (Nedić, Olshevsky & Shi 2017).

Every worker keeps a tracker ``y_i`` of the workers' average gradient and gossips it with its
model, so that each worker descends along (an estimate of) the global gradient instead of its
own. With ``y^{-1} = g^{-1} = 0``, ``W^t`` the mixing matrix of step t (``W^{-1} = W^0``):

    y_i^t = Σ_j w_ij^{t-1} y_j^{t-1} + g_i(x_i^t) − g_i(x_i^{t-1})
    overlap (DIGing):    x_i^{t+1} = opt_i(Σ_j w_ij^t x_j^t, y_i^t)
    step_first (DSGT):   x_i^{t+1} = Σ_j w_ij^t opt_i(x_j^t, y_j^t)

The tracker is mixed with the previous step's W in both, as the papers write them for graphs that
change (DIGing: ``y^{k+1} = W(k) y^k + ∇f(x^{k+1}) − ∇f(x^k)``). DIGing is the less stable of the
two at the same step size: on a 7-ring with heterogeneity 1 it diverges at lr 0.2 (spectral radius
of its iteration 1.011) where DSGT converges.

``opt_i(x, y)`` is the worker's optimizer stepping ``x`` with ``y`` in place of the gradient
(SGD: ``x − η y``). A doubly stochastic W keeps ``Σ_i y_i^t = Σ_i g_i(x_i^t)``, so at a fixed
point every worker sits at a stationary point of the average objective: with exact gradients
and a constant step size the workers reach the exact optimum, where D-PSGD stops at a distance
that grows with the workers' heterogeneity. ``clip_norm`` clips ``g_i`` before it enters the
tracker; an optimizer's weight decay is applied on top of ``y_i`` (it is not tracked).

One message per neighbour and step carries ``x`` and ``y`` together: twice D-PSGD's bytes. In the
``overlap`` order it holds ``x^t`` for step t's neighbours and ``y^{t-1}`` for step t−1's (one
round, posted before the gradients are computed: a neighbour of both gets both in one message);
in ``step_first`` it holds ``opt(x^t, y^t)`` and ``y^t``, and the mixed tracker is kept for the
next step. W may change from step to step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch

from gossip.algorithms.base import Algorithm, GossipOptions
from gossip.registry import option
from gossip.algorithms.worker import Worker
from topologies import Topology


@dataclass
class GradientTrackingOptions(GossipOptions):
    """Gradient tracking has no hyperparameters of its own: model and tracker go to every neighbour."""

    name: Literal["gradient_tracking"] = option(
        "gradient_tracking", help="gradient tracking (DSGT in step_first, DIGing in overlap): "
                                  "gossips the model and a tracker of the average gradient")


class GradientTracking(Algorithm):
    Options = GradientTrackingOptions
    paper_orders = ("overlap", "step_first")  # DIGing, DSGT
    link_drop_refusal = ("keeps the sum of its trackers equal to the sum of the gradients only "
                         "while every message arrives")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: y^{t-1} (overlap) or Σ_j w_ij y_j^{t-1} (step_first): what step t adds its gradient change to
        self.tracker = {w.id: torch.zeros_like(w.params) for w in self.workers}
        self.previous_gradient = {w.id: torch.zeros_like(w.params) for w in self.workers}

    @classmethod
    def bytes_per_step(cls, options: GradientTrackingOptions, shapes: list[torch.Size], topology: Topology,
                       worker: int) -> int:
        return topology.degree(worker) * 4 * 2 * sum(math.prod(shape) for shape in shapes)

    def step(self, t: int, lr: float | None, compute_gradients: Callable[[], None]) -> None:
        topology = self.schedule(t)
        if self.options.order == "overlap":
            previous = self.schedule(max(t - 1, 0))
            pending = self.send_models_and_trackers(topology, previous)
            compute_gradients()
            inbox = pending.wait()
            size = self.workers[0].params.numel()
            models = {pair: m[:size] for pair, m in inbox.items() if pair[0] in topology.in_neighbors(pair[1])}
            trackers = {pair: m[-size:] for pair, m in inbox.items() if pair[0] in previous.in_neighbors(pair[1])}
            for w in self.workers:
                w.params.copy_(self.mix(topology, w.id, w.params, models))
                self.track(w, self.mix(previous, w.id, self.tracker[w.id], trackers))
                self.tracker[w.id].copy_(w.grads)
            self.local_step(lr, clip=False)
        else:
            compute_gradients()
            for w in self.workers:
                self.track(w, self.tracker[w.id])
            self.local_step(lr, clip=False)
            messages = {w.id: torch.cat([w.params, w.grads]) for w in self.workers}
            inbox = self.send_to_neighbours(topology, messages).wait()
            for w in self.workers:
                x, y = self.mix(topology, w.id, messages[w.id], inbox).chunk(2)
                w.params.copy_(x)
                self.tracker[w.id].copy_(y)

    def send_models_and_trackers(self, topology: Topology, previous: Topology) -> Any:
        """Post one round: ``x_i`` to ``topology``'s neighbours, ``y_i`` to ``previous``'s, both
        (``[x_i, y_i]``) to a neighbour in each."""
        outbox, expected = {}, {}
        for w in self.workers:
            i, size = w.id, w.params.numel()
            made: dict[tuple[bool, bool], torch.Tensor] = {}  # one message per kind, shared by its receivers
            for j in set(topology.out_neighbors(i)) | set(previous.out_neighbors(i)):
                kind = (j in topology.out_neighbors(i), j in previous.out_neighbors(i))
                if kind not in made:
                    made[kind] = torch.cat([w.params] * kind[0] + [self.tracker[i]] * kind[1])
                outbox[(i, j)] = made[kind]
            for j in set(topology.in_neighbors(i)) | set(previous.in_neighbors(i)):
                parts = (j in topology.in_neighbors(i)) + (j in previous.in_neighbors(i))
                expected[(j, i)] = (parts * size, w.params.dtype)
        return self.network.start(outbox, expected)

    def track(self, worker: Worker, mixed_tracker: torch.Tensor) -> None:
        """``grads ← y^t = mixed_tracker + g^t − g^{t-1}`` (``g^t`` clipped first), keeping ``g^t``."""
        worker.clip_grads_()
        gradient = worker.grads.clone()
        worker.grads.add_(mixed_tracker).sub_(self.previous_gradient[worker.id])
        self.previous_gradient[worker.id].copy_(gradient)

    def worker_state(self, worker: Worker) -> dict[str, torch.Tensor]:
        return {"tracker": self.tracker[worker.id], "previous_gradient": self.previous_gradient[worker.id]}

    def load_worker_state(self, worker: Worker, state: dict[str, torch.Tensor]) -> None:
        self.tracker[worker.id].copy_(state["tracker"])
        self.previous_gradient[worker.id].copy_(state["previous_gradient"])
