"""PowerGossip (Vogels, Karimireddy, Jaggi 2020, Algorithms 1 and 2).

Every step runs ``iterations`` rounds of compressed gossip, each on the result of the previous
one: on ``x^t`` in the ``overlap`` order (the paper's Algorithm 1: the gradient is taken at
``x^t`` too, and the local step follows the rounds), on ``x^{t+½} = opt(x^t, g)`` in
``step_first``. In a round, every edge's :class:`~gossip.algorithms.edge.EdgeCompressor` sends one low-rank
projection per matrix parameter, and each worker applies the rank-``r`` approximations of
``x_j − x_i`` from all its neighbours at once. Tensors with one dimension (and matrices below
``min_compress_size``) are gossiped uncompressed, once per step, as in D-PSGD. No
hyperparameter beyond the number of rounds.

An edge that is down in a round (``faults.link_drop``) is skipped on both ends: each end uses its
own message in place of the missing one, so the edge's difference is zero, the parameters get no
update from it (the uncompressed entries keep its weight on the self-weight), and both ends set the
edge's shared vector to the same zero difference (the normalised ones vector in the next round).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from gossip.algorithms.base import GossipAlgorithm, GossipOptions
from gossip.registry import option
from gossip.algorithms.edge import EdgeCompressor, MatrixPlan, Neighbourhood
from gossip.algorithms.worker import Worker
from topologies import Topology


@dataclass
class PowerGossipOptions(GossipOptions):
    """PowerGossip: rank-``rank`` power iteration on the differences between neighbours."""

    name: Literal["powergossip"] = option("powergossip", help="PowerGossip: low-rank gossip of model differences")
    iterations: int = option(1, help="power-iteration rounds (full compressed gossip rounds) per step", ge=1)
    rank: int = option(1, help="columns of the shared vectors (rank of each difference's approximation)", ge=1)
    warm_start: bool = option(True, help="reuse the last difference projection as the next vector "
                                         "(false: a fresh random projection every round)")
    min_compress_size: int = option(0, help="matrices with fewer entries travel uncompressed", ge=0)


class PowerGossip(GossipAlgorithm):
    Options = PowerGossipOptions
    requires_static = True  # one power iteration per edge of one fixed graph
    link_drop_refusal = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.topology = self.schedule(0)
        views = self.workers[0].views
        self.plan = MatrixPlan.from_shapes([v.shape for v in views], self.options.min_compress_size, self.options.rank)
        self.plan.dense_index = self.plan.dense_index.to(self.network.device)
        self.edges = {w.id: {j: EdgeCompressor(w.id, j, self.plan, self.seed, self.options.warm_start,
                                               self.network.device)
                             for j in self.topology.neighbors(w.id)}
                      for w in self.workers}
        self.neighbourhoods = {
            w.id: Neighbourhood(list(self.edges[w.id].values()),
                                [[w.views[k].view(shape) for k in members] for shape, members in self.plan.groups],
                                [self.topology.weight(w.id, j) for j in self.edges[w.id]], self.plan,
                                self.network.device)
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

    @classmethod
    def step_events(cls, options: PowerGossipOptions) -> tuple[str, ...]:
        return ("compute",) + ("round",) * options.iterations

    def start_gossip(self, t: int, topology: Topology) -> None:
        """Nothing is posted ahead: each round's messages depend on the previous round."""

    def finish_gossip(self, t: int, topology: Topology, pending: None) -> None:
        self.gossip_rounds(t)

    def gossip_rounds(self, t: int = 0) -> None:
        """A step's ``iterations`` rounds: the first also mixes the uncompressed entries, each but the
        last makes the next one's messages in its update pass."""
        for round_index in range(self.options.iterations):
            self.gossip_round(with_dense=round_index == 0, prefetch=round_index + 1 < self.options.iterations,
                              t=t, round_index=round_index)

    def gossip_round(self, with_dense: bool, prefetch: bool = False, t: int = 0, round_index: int = 0) -> None:
        """One compressed round for all local workers; the first round of a step also mixes the
        uncompressed entries, which ride along at the end of every message. Each worker's messages
        leave as soon as they are projected, and each worker is updated as soon as its neighbours'
        messages are in (:meth:`Network.pipelined`); with ``prefetch`` (another round without the
        uncompressed entries follows) the update pass also makes that round's messages. ``t`` and
        ``round_index`` name the round for the link faults."""
        faults = self.network.faults
        up = {w.id: [faults is None or not faults.down(t, round_index, w.id, j) for j in self.edges[w.id]]
              for w in self.workers}
        dense_index = self.plan.dense_index
        dense = {w.id: w.params.index_select(0, dense_index) for w in self.workers} if with_dense else {}
        extra = dense_index.numel() if with_dense else 0
        sent: dict[int, torch.Tensor] = {}

        def messages_of(worker: int) -> dict[tuple[int, int], torch.Tensor]:
            sent[worker] = self.neighbourhoods[worker].project(extra)
            if with_dense:
                sent[worker][:, sent[worker].shape[1] - extra:] = dense[worker]
            return {(worker, j): row for j, row, on in zip(self.edges[worker], sent[worker], up[worker]) if on}

        width = self.plan.projection_floats(self.neighbourhoods[self.workers[0].id].side) + extra
        expected = {(j, w.id): (width, torch.float32) for w in self.workers
                    for j, on in zip(self.edges[w.id], up[w.id]) if on}
        by_id = {w.id: w for w in self.workers}
        for worker, inbox in self.network.pipelined(messages_of, expected):
            neighbours = list(self.edges[worker])
            if not neighbours:
                continue
            received = torch.stack([inbox[(j, worker)] if on else own
                                    for j, on, own in zip(neighbours, up[worker], sent[worker])])
            self.neighbourhoods[worker].update(sent[worker], received, prefetch)
            if with_dense:
                mixed = torch.addmv(dense[worker], received[:, width - extra:].T, self.neighbourhoods[worker].weights,
                                    beta=self.topology.weight(worker, worker))
                by_id[worker].params.index_copy_(0, dense_index, mixed)

    def worker_state(self, worker: Worker) -> dict[str, Any]:
        return {str(j): edge.state_dict() for j, edge in self.edges[worker.id].items()}

    def load_worker_state(self, worker: Worker, state: dict[str, Any]) -> None:
        for j, edge in self.edges[worker.id].items():
            edge.load_state_dict(state[str(j)])
