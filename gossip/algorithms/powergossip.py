"""PowerGossip (Vogels, Karimireddy, Jaggi 2020, Algorithms 1 and 2).

Every step: the gradient at ``x^t`` and the local optimizer step, then ``iterations`` rounds of
compressed gossip, each applied to the already-updated parameters. In a round, every edge's
:class:`~gossip.edge.EdgeCompressor` sends one low-rank projection per matrix parameter, and each
worker applies the rank-``r`` approximations of ``x_j − x_i`` from all its neighbours at once.
Tensors with one dimension (and matrices below ``min_compress_size``) are gossiped uncompressed,
once per step, as in D-PSGD. No hyperparameter beyond the number of rounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch

from gossip.algorithms.base import Algorithm
from gossip.config import option
from gossip.edge import EdgeCompressor, MatrixPlan
from gossip.worker import Worker
from topologies import Topology


@dataclass
class PowerGossipOptions:
    """PowerGossip: rank-``rank`` power iteration on the differences between neighbours."""

    name: Literal["powergossip"] = option("powergossip", help="PowerGossip: low-rank gossip of model differences")
    iterations: int = option(1, help="power-iteration rounds (full compressed gossip rounds) per step", ge=1)
    rank: int = option(1, help="columns of the shared vectors (rank of each difference's approximation)", ge=1)
    warm_start: bool = option(True, help="reuse the last difference projection as the next vector "
                                         "(false: a fresh random projection every round)")
    min_compress_size: int = option(0, help="matrices with fewer entries travel uncompressed", ge=0)

    def check(self, config: Any) -> None:
        if not config.topology.build(config.workers, config.seed).is_static:
            raise ValueError("name: powergossip keeps one power iteration per edge and needs a static topology")


def stacked(matrices: list[torch.Tensor]) -> torch.Tensor:
    """``G × rows × cols`` for a shape group: a view when the group has one matrix, else a copy."""
    return matrices[0].unsqueeze(0) if len(matrices) == 1 else torch.stack(matrices)


class PowerGossip(Algorithm):
    Options = PowerGossipOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.schedule.is_static:
            raise ValueError("powergossip needs a static topology")
        self.topology = self.schedule(0)
        views = self.workers[0].views
        self.plan = MatrixPlan.from_shapes([v.shape for v in views], self.options.min_compress_size, self.options.rank)
        self.plan.dense_index = self.plan.dense_index.to(self.network.device)
        self.matrices = {w.id: [[w.views[k].view(shape) for k in members] for shape, members in self.plan.groups]
                         for w in self.workers}
        self.edges = {w.id: {j: EdgeCompressor(w.id, j, self.plan, self.seed, self.options.warm_start,
                                               self.network.device)
                             for j in self.topology.neighbors(w.id)}
                      for w in self.workers}

    @classmethod
    def bytes_per_step(cls, options: PowerGossipOptions, shapes: list[torch.Size], topology: Topology,
                       worker: int) -> float:
        """Per neighbour: the projections of every round (sides alternate from round to round, so
        for an odd number of iterations this is the mean over two consecutive steps, exact over
        any even number of steps), plus the uncompressed entries once per step; 4 bytes a float."""
        plan = MatrixPlan.from_shapes(shapes, options.min_compress_size, options.rank)
        per_round_pair = plan.projection_floats(0) + plan.projection_floats(1)
        floats = options.iterations * per_round_pair / 2 + plan.dense_index.numel()
        return topology.degree(worker) * 4 * floats

    def step(self, t: int, lr: float, compute_gradients: Callable[[], None]) -> None:
        compute_gradients()
        for w in self.workers:
            w.optimizer.step(w.params, w.grads, lr)
        for round_index in range(self.options.iterations):
            self.gossip_round(with_dense=round_index == 0)

    def gossip_round(self, with_dense: bool) -> None:
        """One compressed round for all local workers (plus the uncompressed part if asked)."""
        topology, dense_index = self.topology, self.plan.dense_index
        stacks = {w.id: [stacked(group) for group in self.matrices[w.id]] for w in self.workers}
        dense = {w.id: w.params.index_select(0, dense_index) for w in self.workers} if with_dense else {}
        outbox, expected = {}, {}
        for w in self.workers:
            for j, edge in self.edges[w.id].items():
                projection = edge.project(stacks[w.id])
                outbox[(w.id, j)] = torch.cat([projection, dense[w.id]]) if with_dense else projection
                expected[(j, w.id)] = (outbox[(w.id, j)].numel(), torch.float32)
        inbox = self.network.exchange(outbox, expected)
        for w in self.workers:
            self.apply(w, stacks[w.id], outbox, inbox, dense.get(w.id))

    def apply(self, w: Worker, stacks: list[torch.Tensor], outbox: dict, inbox: dict,
              own_dense: torch.Tensor | None) -> None:
        """Add every neighbour's low-rank update to ``w``'s matrices in one batched product per
        shape group, and mix the uncompressed entries."""
        per_group: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in self.plan.groups]
        sides = {edge.side for edge in self.edges[w.id].values()}  # all edges alternate in lockstep
        projected = self.plan.projection_floats(sides.pop()) if sides else 0
        mixed_dense = own_dense * self.topology.weight(w.id, w.id) if own_dense is not None else None
        for j, edge in self.edges[w.id].items():
            weight = self.topology.weight(w.id, j)
            mine, theirs = outbox[(w.id, j)], inbox[(j, w.id)]
            for g, factors in enumerate(edge.update_factors(mine[:projected], theirs[:projected], weight)):
                per_group[g].append(factors)
            if mixed_dense is not None:
                mixed_dense.add_(theirs[projected:], alpha=weight)
        for g, factors in enumerate(per_group):
            if factors:
                left = torch.cat([a for a, _ in factors], dim=2)
                right = torch.cat([b for _, b in factors], dim=2).transpose(1, 2)
                matrices = self.matrices[w.id][g]
                if len(matrices) == 1:  # update the parameter in place: no temporary the size of M
                    matrices[0].unsqueeze(0).baddbmm_(left, right)
                else:
                    torch._foreach_add_(matrices, list(torch.bmm(left, right).unbind(0)))
        if mixed_dense is not None:
            w.params.index_copy_(0, self.plan.dense_index, mixed_dense)

    def worker_state(self, worker: Worker) -> dict[str, Any]:
        return {str(j): edge.state_dict() for j, edge in self.edges[worker.id].items()}

    def load_worker_state(self, worker: Worker, state: dict[str, Any]) -> None:
        for j, edge in self.edges[worker.id].items():
            edge.load_state_dict(state[str(j)])
