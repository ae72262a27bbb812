"""Link failures: in every gossip round each edge is down with probability ``link_drop``.

Whether edge ``{i, j}`` is down in round ``r`` of step ``t`` is a draw seeded by
``(seed, "link", t, r, min(i, j), max(i, j))``, so both endpoints (and every process) agree
without talking. A down edge carries no message in either direction and none of its bytes are
counted; how an algorithm stays correct without the message is its own business (D-PSGD moves
the edge's weight onto the two self-weights, PowerGossip skips the edge on both ends), and an
algorithm that cannot refuses the option (:meth:`gossip.algorithms.Algorithm.check_link_drop`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gossip.registry import option
from gossip.comm.seeding import seed_for
from topologies import Topology


@dataclass
class FaultsConfig:
    """Failures injected into the gossip rounds (none by default)."""

    link_drop: float = option(0.0, help="probability that an edge is down in a round (both directions, "
                                        "drawn from the seed, step, round and edge)", ge=0, lt=1)


class LinkFaults:
    """The deterministic draws of which edges are down."""

    def __init__(self, link_drop: float, seed: int) -> None:
        self.link_drop = link_drop
        self.seed = seed
        self._cached: tuple[tuple[int, int, int], Topology] | None = None

    def down(self, step: int, round_index: int, i: int, j: int) -> bool:
        """Whether the edge ``{i, j}`` is down in round ``round_index`` of step ``step``.

        >>> faults = LinkFaults(0.5, seed=0)
        >>> faults.down(3, 0, 1, 2) == faults.down(3, 0, 2, 1)
        True
        """
        draw = seed_for(self.seed, "link", step, round_index, min(i, j), max(i, j)) / 2.0 ** 63
        return draw < self.link_drop

    def surviving(self, topology: Topology, step: int, round_index: int = 0) -> Topology:
        """``topology`` without the edges that are down, each down edge's weight ``w_ij`` moved onto
        ``w_ii`` and ``w_jj``: W stays symmetric and doubly stochastic, so gossip with it keeps the
        average exactly."""
        key = (id(topology), step, round_index)
        if self._cached is not None and self._cached[0] == key:
            return self._cached[1]
        down = [(i, j) for i, j in topology.graph.edges if self.down(step, round_index, i, j)]
        if not down:
            return topology
        W = topology.W.copy()
        graph = topology.graph.copy()
        for i, j in down:
            W[i, i] += W[i, j]
            W[j, j] += W[j, i]
            W[i, j] = W[j, i] = 0.0
            graph.remove_edge(i, j)
        result = Topology(graph, np.asarray(W), name=f"{topology.name} (links down)", require_connected=False)
        self._cached = (key, result)
        return result
