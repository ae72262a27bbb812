"""PowerGossip's per-edge state: the shared low-rank power iteration on model differences.

For an edge {i, j} and every matrix parameter ``M`` (viewed ``shape[0] × rest``), both endpoints
keep the same vector ``v`` (``rank`` columns) and take turns on its two sides. One round, with
``lo = min(i, j)``, ``hi = max(i, j)`` and ``v̂`` the orthonormalised ``v``:

    right side:  each endpoint sends p = M_self v̂;   d = p_hi − p_lo;   x_i += w_ij·sgn·d v̂ᵀ
    left side:   each endpoint sends q = M_selfᵀ v̂;  d = q_hi − q_lo;   x_i += w_ij·sgn·v̂ dᵀ

with ``sgn = +1`` for ``lo`` and ``−1`` for ``hi``; then ``v ← d`` (warm start) or a fresh draw
from the edge's generator (random projections), and the side flips. Both endpoints compute
``d`` from the same two messages and draw from generators seeded by ``(seed, lo, hi)``, so their
states stay bit-identical without ever being sent. The update is an exact projection of
``x_j − x_i``: the pair's sum is unchanged and a zero difference stays zero.

A worker's edges are handled together by a :class:`Neighbourhood`: small matrices of the same
shape are projected together (one batched product per shape group and edge), every edge's
projections of a round are written straight into one row of a send buffer (one message per
neighbour), and the rank-``r`` updates from all neighbours are one product per shape group. A
matrix of its own group (every large one) is updated in place and projected for all edges with one
product (:func:`update_and_project`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from gossip.comm.seeding import generator


BATCH_LIMIT = 1 << 16


@dataclass
class MatrixPlan:
    """Which parameters are compressed, grouped by matrix shape, and which travel uncompressed.

    ``groups`` lists ``((rows, cols), [view indices])``; ``ranks`` the rank used for each group
    (the requested rank, at most ``min(rows, cols)``); ``dense_index`` holds the flat-vector
    positions of the uncompressed entries (1-D tensors, and matrices below ``min_size``).
    """

    groups: list[tuple[tuple[int, int], list[int]]]
    ranks: list[int]
    dense_index: torch.Tensor

    @classmethod
    def from_shapes(cls, shapes: list[torch.Size], min_size: int = 0, rank: int = 1) -> "MatrixPlan":
        """Small matrices of one shape form one group (one batched product: Python overhead is
        what matters for them); a matrix of ``BATCH_LIMIT`` entries or more is a group of its own,
        projected and updated in place (memory traffic is what matters: no stacked copy)."""
        by_key: dict[tuple[int, ...], list[int]] = {}
        dense: list[torch.Tensor] = []
        offset = 0
        for index, shape in enumerate(shapes):
            numel = int(torch.Size(shape).numel())
            if len(shape) >= 2 and numel >= max(min_size, 1):
                key = (shape[0], numel // shape[0]) + ((index,) if numel >= BATCH_LIMIT else ())
                by_key.setdefault(key, []).append(index)
            else:
                dense.append(torch.arange(offset, offset + numel))
            offset += numel
        dense_index = torch.cat(dense) if dense else torch.zeros(0, dtype=torch.long)
        groups = [((key[0], key[1]), members) for key, members in sorted(by_key.items())]
        return cls(groups, [min(rank, *shape) for shape, _ in groups], dense_index)

    def blocks(self, axis: int) -> list[tuple[int, int, int, int]]:
        """Per group ``(offset, members, length, rank)`` of a flat buffer that holds, member after
        member, a ``length × rank`` block with ``length = shape[axis]``: the layout of the
        messages of side ``axis`` and of the vectors of side ``1 − axis``."""
        blocks, offset = [], 0
        for (shape, members), rank in zip(self.groups, self.ranks):
            blocks.append((offset, len(members), shape[axis], rank))
            offset += len(members) * shape[axis] * rank
        return blocks

    def projection_floats(self, side: int) -> int:
        """Floats one endpoint sends per edge in a round on ``side`` (0: right, 1: left)."""
        return sum(members * length * rank for _, members, length, rank in self.blocks(side))

    def vector_floats(self, side: int) -> int:
        """Floats of an edge's shared vectors while they stand on ``side``."""
        return self.projection_floats(1 - side)


def orthonormalize(v: torch.Tensor) -> torch.Tensor:
    """Orthonormal columns spanning ``v`` (batched ``B × dim × rank``); rank 1 is a normalisation.

    A zero vector (the pair had reached consensus on that matrix) becomes the normalised ones
    vector, so that the iteration can pick up again when the difference reappears."""
    if v.shape[-1] == 1:
        norm = torch.linalg.vector_norm(v, dim=-2, keepdim=True)
        return torch.where(norm > 0, v / norm, v.shape[-2] ** -0.5)
    return torch.linalg.qr(v).Q


Blocks = list[tuple[int, int, int, int]]


def orthonormalize_rows(vectors: torch.Tensor, blocks: Blocks) -> torch.Tensor:
    """A new tensor with every member's block of every row of ``vectors`` (edges × floats, laid out
    by ``blocks``, :meth:`MatrixPlan.blocks`) orthonormalised as by :func:`orthonormalize`, one
    batched call per shape group."""
    out, degree = torch.empty_like(vectors), vectors.shape[0]
    for offset, members, length, rank in blocks:
        end = offset + members * length * rank
        block = vectors[:, offset:end].reshape(degree * members, length, rank)
        out[:, offset:end] = orthonormalize(block).reshape(degree, -1)
    return out


def stacked(matrices: list[torch.Tensor]) -> torch.Tensor:
    """``G × rows × cols`` for a shape group: a view when the group has one matrix, else a copy."""
    return matrices[0].unsqueeze(0) if len(matrices) == 1 else torch.stack(matrices)


class EdgeCompressor:
    """One endpoint's state for the edge ``{owner, peer}``: the shared vectors of every matrix
    (one flat buffer, laid out by :meth:`MatrixPlan.blocks`), their side, and the edge's generator."""

    def __init__(self, owner: int, peer: int, plan: MatrixPlan, seed: int, warm_start: bool = True,
                 device: torch.device | str = "cpu") -> None:
        self.owner, self.peer = owner, peer
        self.lo, self.hi = min(owner, peer), max(owner, peer)
        self.sign = 1.0 if owner == self.lo else -1.0
        self.plan, self.warm_start = plan, warm_start
        self.generator = generator(seed, "powergossip", self.lo, self.hi, device=device)
        self.side = 0  # 0: v on the right (length cols), 1: v on the left (length rows)
        self.vector = self._draw()

    def _draw(self) -> torch.Tensor:
        """Fresh shared vectors for the current side, from the edge's generator."""
        return torch.randn(self.plan.vector_floats(self.side), generator=self.generator, device=self.generator.device)

    def round_vector(self) -> torch.Tensor:
        """The (not yet orthonormalised) vectors of this round: the last difference (warm start) or
        a fresh draw (random projections)."""
        if not self.warm_start:
            self.vector = self._draw()
        return self.vector

    def advance(self, difference: torch.Tensor) -> None:
        """After a round: ``v ← d = p_hi − p_lo`` (the same on both endpoints) and the side flips."""
        self.vector = difference
        self.side = 1 - self.side

    @property
    def vectors(self) -> list[torch.Tensor]:
        """The vectors per shape group, ``members × length × rank``."""
        return [self.vector[offset:offset + members * length * rank].view(members, length, rank)
                for offset, members, length, rank in self.plan.blocks(1 - self.side)]

    def state_dict(self) -> dict[str, Any]:
        return {"vector": self.vector.clone(), "side": self.side, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.vector = state["vector"].to(self.generator.device)
        self.side = state["side"]
        self.generator.set_state(state["generator"].cpu())


def update_and_project(matrix: torch.Tensor, update: tuple[torch.Tensor, torch.Tensor] | None = None,
                       side: int = 0, vectors: torch.Tensor | None = None,
                       messages: torch.Tensor | None = None) -> None:
    """Add ``left @ right`` (``update``) to ``matrix`` in place, then project the updated matrix for
    every edge ``k``: ``messages[k] = M v̂_k`` (``side`` 0, ``v̂_k = vectors[k]`` of cols × rank) or
    ``Mᵀ v̂_k`` (side 1, rows × rank). All edges' projections are one product with the vectors as
    rows, the layout in which BLAS streams through the matrix once."""
    if update is not None:
        matrix.addmm_(*update)
    if vectors is not None and messages is not None and len(vectors):
        operator = matrix.T if side == 0 else matrix
        messages.copy_(torch.matmul(vectors.transpose(1, 2), operator).transpose(1, 2))


class Neighbourhood:
    """All edges of one worker, worked together: a round is :meth:`project` (the messages, one row
    per neighbour), the exchange, then :meth:`update` (every neighbour's low-rank update at once).

    ``matrices`` are the worker's parameters per shape group (views, updated in place); ``weights``
    the mixing weight of each edge's peer. All edges of a worker stand on the same side: they
    start together and flip together. ``update(..., prefetch=True)`` also makes the next round's
    messages in the same pass over the matrices (valid while nothing else changes them, i.e.
    between the rounds of one step); :meth:`project` then hands them out."""

    def __init__(self, edges: list[EdgeCompressor], matrices: list[list[torch.Tensor]], weights: list[float],
                 plan: MatrixPlan, device: torch.device | str = "cpu") -> None:
        self.edges, self.matrices, self.plan = edges, matrices, plan
        self.weights = torch.tensor(weights, dtype=torch.float32, device=device)
        self.signs = torch.tensor([edge.sign for edge in edges], dtype=torch.float32, device=device).view(-1, 1)
        self._blocks = (plan.blocks(0), plan.blocks(1))  # the layout of each side, fixed for the run
        self._vectors: torch.Tensor | None = None  # the round's v̂ of every edge, one row per edge
        self._normalized: list[torch.Tensor] = []  # its blocks per group, degree × m × n × r
        self._prefetched: torch.Tensor | None = None

    @property
    def side(self) -> int:
        return self.edges[0].side if self.edges else 0

    def project(self, extra: int = 0) -> torch.Tensor:
        """``degree × (message floats + extra)``: row ``k`` is the message to ``edges[k].peer``,
        ``M v̂`` (right side) or ``Mᵀ v̂`` (left side) for every matrix; the last ``extra`` columns
        are left for the caller. A prefetched round has no extra columns."""
        if self._prefetched is not None:
            if extra:
                raise ValueError("a prefetched round has no room for extra columns")
            out, self._prefetched = self._prefetched, None
            return out
        out = self._start_round(extra)
        for g in range(len(self.matrices)):
            self._project_group(g, self.matrices[g], out)
        return out

    def update(self, sent: torch.Tensor, received: torch.Tensor, prefetch: bool = False) -> None:
        """Apply ``Σ_k w_k · (low-rank part of x_k − x_self)`` from the rows of ``sent`` (this
        worker's messages) and ``received`` (its neighbours'), advance every edge's vectors, and
        with ``prefetch`` make the next round's messages in the same pass."""
        side, degree = self.side, len(self.edges)
        if not degree:
            return
        floats = self.plan.projection_floats(side)
        difference = received[:, :floats] - sent[:, :floats]  # theirs − own: sgn · (p_hi − p_lo)
        scaled = difference * self.weights.view(-1, 1)
        advanced = difference * self.signs  # p_hi − p_lo, bitwise the same on both endpoints
        normalized = self._normalized
        for edge, row in zip(self.edges, advanced):
            edge.advance(row)
        out = self._start_round(0) if prefetch else None
        for g in range(len(self.matrices)):
            group, (offset, members, length, rank) = self.matrices[g], self._blocks[side][g]
            factor = scaled[:, offset:offset + members * length * rank].reshape(degree, members, length, rank)
            vector = normalized[g]
            rows, cols = (factor, vector) if side == 0 else (vector, factor)
            left = rows.permute(1, 2, 0, 3).reshape(members, rows.shape[2], degree * rank)
            right = cols.permute(1, 0, 3, 2).reshape(members, degree * rank, cols.shape[2])
            if len(group) == 1:  # in place, no temporary the size of M
                self._project_group(g, group, out, (left[0], right[0]))
            else:
                torch._foreach_add_(group, list(torch.bmm(left, right).unbind(0)))
                if out is not None:
                    self._project_group(g, group, out)
        if out is None:
            self._vectors, self._normalized = None, []
        self._prefetched = out

    def _start_round(self, extra: int) -> torch.Tensor:
        """The send buffer of a round, after orthonormalising every edge's vectors for it."""
        side, degree = self.side, len(self.edges)
        out = torch.empty(degree, self.plan.projection_floats(side) + extra, device=self.weights.device)
        self._vectors, self._normalized = None, []
        if degree:
            blocks = self._blocks[1 - side]
            self._vectors = orthonormalize_rows(torch.stack([edge.round_vector() for edge in self.edges]), blocks)
            # per group: offset o, m members of n × r blocks
            self._normalized = [self._vectors[:, o:o + m * n * r].view(degree, m, n, r) for o, m, n, r in blocks]
        return out

    def _project_group(self, g: int, group: list[torch.Tensor], out: torch.Tensor | None,
                       update: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """Group ``g``'s messages of the round into ``out`` (if any), after applying ``update`` to a
        single matrix first."""
        side, degree = self.side, len(self.edges)
        offset, members, length, rank = self._blocks[side][g]
        messages = normalized = None
        if out is not None and degree:
            messages = out[:, offset:offset + members * length * rank].view(degree, members, length, rank)
            normalized = self._normalized[g]
        if len(group) == 1:
            update_and_project(group[0], update, side, None if normalized is None else normalized[:, 0],
                               None if messages is None else messages[:, 0])
            return
        operator = stacked(group) if side == 0 else stacked(group).transpose(1, 2)
        if messages is not None:
            for k in range(degree):
                torch.bmm(operator, normalized[k], out=messages[k])
