"""The ``Topology``: a communication graph with its mixing matrix, validated once at construction."""

from __future__ import annotations

from functools import cached_property

import networkx as nx
import numpy as np
from numpy.typing import ArrayLike

from topologies.summary import describe
from topologies.validation import check_graph, check_mixing_matrix


class Topology:
    """A connected graph on nodes 0..n-1 with a symmetric doubly stochastic mixing matrix ``W``.

    One gossip round replaces every worker's vector by ``x_i <- sum_j W[i, j] x_j``, summing over
    the worker itself and its neighbours. ``spectral_gap`` (``1 - slem**2``, the rho of the
    PowerGossip and ChocoSGD papers) says how much one round shrinks the distance to consensus.

    ``require_connected=False`` admits a disconnected graph: a single step of a time-varying
    schedule such as the one-peer exponential graph (a perfect matching) is disconnected, and only
    the product over several steps mixes. Its spectral gap is then 0.

    >>> import networkx as nx, numpy as np
    >>> t = Topology(nx.path_graph(2), np.full((2, 2), 0.5), name="pair")
    >>> t.neighbors(0), t.weight(0, 1), t.spectral_gap
    ([1], 0.5, 1.0)
    """

    def __init__(self, graph: nx.Graph, W: ArrayLike, name: str = "", *, require_connected: bool = True):
        check_graph(graph, require_connected)
        self._W = check_mixing_matrix(W, graph)
        self._W.flags.writeable = False
        self._graph = nx.Graph()  # a private frozen copy with plain int nodes in order 0..n-1
        self._graph.add_nodes_from(range(len(self._W)))
        self._graph.add_edges_from((int(i), int(j)) for i, j in graph.edges)
        nx.freeze(self._graph)
        self._neighbors = [sorted(self._graph[i]) for i in range(self.n)]
        self.name = name

    @property
    def n(self) -> int:
        """The number of nodes (workers)."""
        return len(self._W)

    @property
    def W(self) -> np.ndarray:
        """The mixing matrix, n x n float64, read-only."""
        return self._W

    @property
    def graph(self) -> nx.Graph:
        """The graph, frozen (a copy of the one given, nodes 0..n-1)."""
        return self._graph

    def neighbors(self, i: int) -> list[int]:
        """The neighbours of node ``i``, sorted, without ``i`` itself."""
        return list(self._neighbors[self._node(i)])

    def weight(self, i: int, j: int) -> float:
        """``W[i, j]``: the weight node ``i`` gives to ``j``'s vector (``i == j``: its own)."""
        return float(self._W[self._node(i), self._node(j)])

    def degree(self, i: int) -> int:
        """The number of neighbours of node ``i``."""
        return len(self._neighbors[self._node(i)])

    @property
    def max_degree(self) -> int:
        """The largest degree: the most messages one node sends per round."""
        return max(len(nbrs) for nbrs in self._neighbors)

    @property
    def edges(self) -> list[tuple[int, int]]:
        """Every edge once, as ``(i, j)`` with ``i < j``, sorted."""
        return sorted((min(i, j), max(i, j)) for i, j in self._graph.edges)

    @cached_property
    def slem(self) -> float:
        """The second-largest eigenvalue modulus of ``W`` (0.0 for a single node).

        The largest eigenvalue is 1 (the all-ones vector); slem is the largest modulus of the
        others, clipped to 1 against rounding. 1 means no contraction (disconnected or periodic).
        """
        eigenvalues = np.linalg.eigvalsh(self._W)  # ascending; the last one is 1
        return float(min(1.0, np.abs(eigenvalues[:-1]).max(initial=0.0)))

    @property
    def spectral_gap(self) -> float:
        """``1 - slem**2``: one round shrinks the squared distance to consensus by ``1 - gap``."""
        return 1.0 - self.slem**2

    def describe(self) -> str:
        """A multi-line summary for people: size, degrees, spectral gap, slem and the weights."""
        return describe(self)

    def __repr__(self) -> str:
        return (f"Topology(name={self.name!r}, n={self.n}, edges={self._graph.number_of_edges()}, "
                f"max_degree={self.max_degree}, spectral_gap={self.spectral_gap:.4g})")

    def _node(self, i: int) -> int:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < self.n:
            raise ValueError(f"node {i!r} is out of range: nodes are 0..{self.n - 1}")
        return i
