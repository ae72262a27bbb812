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

Matrices of the same shape are projected together (one batched product per shape group), and all
of an edge's projections of a round travel as one flat buffer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from gossip.seeding import generator


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

    def projection_floats(self, side: int) -> int:
        """Floats one endpoint sends per edge in a round on ``side`` (0: right, 1: left)."""
        return sum(len(members) * shape[side] * rank for (shape, members), rank in zip(self.groups, self.ranks))


def orthonormalize(v: torch.Tensor) -> torch.Tensor:
    """Orthonormal columns spanning ``v`` (batched ``G × dim × rank``); rank 1 is a normalisation."""
    if v.shape[-1] == 1:
        return v / v.norm(dim=-2, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
    return torch.linalg.qr(v).Q


class EdgeCompressor:
    """One endpoint's state for the edge ``{owner, peer}``: ``v`` per shape group, the side, and
    the edge's generator."""

    def __init__(self, owner: int, peer: int, plan: MatrixPlan, seed: int, warm_start: bool = True,
                 device: torch.device | str = "cpu") -> None:
        self.owner, self.peer = owner, peer
        self.lo, self.hi = min(owner, peer), max(owner, peer)
        self.sign = 1.0 if owner == self.lo else -1.0
        self.plan, self.warm_start = plan, warm_start
        self.generator = generator(seed, "powergossip", self.lo, self.hi, device=device)
        self.side = 0  # 0: v on the right (n_cols), 1: v on the left (n_rows)
        self.vectors = self._draw()
        self._normalized: list[torch.Tensor] = []

    def _draw(self) -> list[torch.Tensor]:
        """Fresh shared vectors for the current side, from the edge's generator."""
        return [torch.randn(len(members), shape[1 - self.side], rank, generator=self.generator,
                            device=self.generator.device)
                for (shape, members), rank in zip(self.plan.groups, self.plan.ranks)]

    def project(self, stacks: list[torch.Tensor]) -> torch.Tensor:
        """This endpoint's message for the round: ``M v̂`` (right) or ``Mᵀ v̂`` (left) for every
        shape group's stacked matrices ``G × rows × cols``, flattened into one buffer."""
        if not self.warm_start:
            self.vectors = self._draw()
        self._normalized = [orthonormalize(v) for v in self.vectors]
        parts = [torch.bmm(m, v) if self.side == 0 else torch.bmm(m.transpose(1, 2), v)
                 for m, v in zip(stacks, self._normalized)]
        return torch.cat([p.reshape(-1) for p in parts]) if parts else torch.zeros(0, device=self.generator.device)

    def update_factors(self, own: torch.Tensor, theirs: torch.Tensor, weight: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per shape group, ``(A, B)`` with ``A Bᵀ`` this endpoint's update ``w·sgn·d v̂ᵀ`` (right)
        or ``w·sgn·v̂ dᵀ`` (left); then ``v`` advances and the side flips."""
        high, low = (theirs, own) if self.sign > 0 else (own, theirs)
        difference = high - low
        factors = []
        offset = 0
        next_vectors = []
        for (shape, members), rank, v_hat, v in zip(self.plan.groups, self.plan.ranks, self._normalized, self.vectors):
            length = len(members) * shape[self.side] * rank
            d = difference[offset:offset + length].view(len(members), shape[self.side], rank)
            offset += length
            scaled = d * (weight * self.sign)
            factors.append((scaled, v_hat) if self.side == 0 else (v_hat, scaled))
            alive = d.flatten(1).norm(dim=1).gt(0).view(-1, 1, 1)
            next_vectors.append(torch.where(alive, d, self._fallback(v, d)))
        self.vectors = next_vectors
        self.side = 1 - self.side
        return factors

    def _fallback(self, v: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """Where the difference is exactly zero (consensus), ``v`` cannot become ``d``: keep a
        vector of the new side's length so the iteration can pick up again later (the previous
        one when it fits, else ones)."""
        return v if v.shape == d.shape else torch.ones_like(d)

    def state_dict(self) -> dict[str, Any]:
        return {"vectors": list(self.vectors), "side": self.side, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.vectors = [v.to(self.generator.device) for v in state["vectors"]]
        self.side = state["side"]
        self.generator.set_state(state["generator"].cpu())
