"""The ``Topology``: a communication graph with its mixing matrix, validated once at construction."""

from __future__ import annotations

from functools import cached_property

import networkx as nx
import numpy as np
from numpy.typing import ArrayLike

from topologies.summary import describe
from topologies.validation import check_graph, check_mixing_matrix


class Topology:
    """A connected graph on nodes 0..n-1 with its mixing matrix ``W``: symmetric and doubly
    stochastic on an undirected ``nx.Graph``, column-stochastic on a directed ``nx.DiGraph``.

    One gossip round replaces every worker's vector by ``x_i <- sum_j W[i, j] x_j``, summing over
    the worker itself and its neighbours (on a directed graph: the nodes j with an edge j -> i,
    the nodes i receives from). ``spectral_gap`` (``1 - slem**2``, the rho of the PowerGossip and
    ChocoSGD papers) says how much one round shrinks the distance to consensus.

    A directed topology is for push-sum (Stochastic Gradient Push): edge j -> i means j sends to
    i, and column j of ``W`` is how j splits its vector over itself and the nodes it sends to.
    ``W`` then keeps the sum of the vectors, not their mean, and push-sum divides by a weight that
    mixes the same way. The graph must be strongly connected.

    ``require_connected=False`` admits a disconnected graph: a single step of a time-varying
    schedule such as the one-peer exponential graph (a perfect matching) is disconnected, and only
    the product over several steps mixes. Its spectral gap is then 0.

    >>> import networkx as nx, numpy as np
    >>> t = Topology(nx.path_graph(2), np.full((2, 2), 0.5), name="pair")
    >>> t.neighbors(0), t.weight(0, 1), t.spectral_gap
    ([1], 0.5, 1.0)
    >>> cycle = nx.DiGraph([(0, 1), (1, 2), (2, 0)])  # 0 sends to 1, 1 to 2, 2 to 0
    >>> d = Topology(cycle, (np.eye(3) + np.roll(np.eye(3), 1, axis=0)) / 2)
    >>> d.directed, d.out_neighbors(0), d.in_neighbors(0), d.weight(1, 0)
    (True, [1], [2], 0.5)
    """

    def __init__(self, graph: nx.Graph | nx.DiGraph, W: ArrayLike, name: str = "", *,
                 require_connected: bool = True):
        check_graph(graph, require_connected)
        self._W = check_mixing_matrix(W, graph)
        self._W.flags.writeable = False
        # a private frozen copy with plain int nodes in order 0..n-1
        self._graph = nx.DiGraph() if graph.is_directed() else nx.Graph()
        self._graph.add_nodes_from(range(len(self._W)))
        self._graph.add_edges_from((int(i), int(j)) for i, j in graph.edges)
        nx.freeze(self._graph)
        if self.directed:
            self._out = [sorted(self._graph.successors(i)) for i in range(self.n)]
            self._in = [sorted(self._graph.predecessors(i)) for i in range(self.n)]
        else:
            self._out = self._in = [sorted(self._graph[i]) for i in range(self.n)]
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
    def graph(self) -> nx.Graph | nx.DiGraph:
        """The graph, frozen (a copy of the one given, nodes 0..n-1)."""
        return self._graph

    @property
    def directed(self) -> bool:
        """Whether the graph is directed (a push-sum topology with column-stochastic ``W``)."""
        return self._graph.is_directed()

    def neighbors(self, i: int) -> list[int]:
        """The neighbours of node ``i``, sorted, without ``i`` itself (undirected topologies only)."""
        node = self._node(i)
        if self.directed:
            raise ValueError(f"neighbors() is for undirected topologies; {self.name or 'this topology'} is "
                             f"directed: use out_neighbors(i) (sends to) or in_neighbors(i) (receives from)")
        return list(self._out[node])

    def out_neighbors(self, i: int) -> list[int]:
        """The nodes that ``i`` sends to, sorted (its neighbours on an undirected topology)."""
        return list(self._out[self._node(i)])

    def in_neighbors(self, i: int) -> list[int]:
        """The nodes that ``i`` receives from, sorted (its neighbours on an undirected topology)."""
        return list(self._in[self._node(i)])

    def weight(self, i: int, j: int) -> float:
        """``W[i, j]``: the weight node ``i`` gives to ``j``'s vector (``i == j``: its own)."""
        return float(self._W[self._node(i), self._node(j)])

    def degree(self, i: int) -> int:
        """The number of messages node ``i`` sends per round: its neighbours, or out-neighbours if directed."""
        return len(self._out[self._node(i)])

    @property
    def max_degree(self) -> int:
        """The largest degree (out-degree if directed): the most messages one node sends per round."""
        return max(len(nbrs) for nbrs in self._out)

    @property
    def edges(self) -> list[tuple[int, int]]:
        """Every edge once, as ``(i, j)`` with ``i < j``, sorted; if directed, every ``(i, j)`` where
        ``i`` sends to ``j``, sorted."""
        if self.directed:
            return sorted(self._graph.edges)
        return sorted((min(i, j), max(i, j)) for i, j in self._graph.edges)

    @cached_property
    def slem(self) -> float:
        """The second-largest eigenvalue modulus of ``W`` (0.0 for a single node).

        The largest eigenvalue is 1 (the all-ones vector, a left one if directed); slem is the
        largest modulus of the others, clipped to 1 against rounding. 1 means no contraction
        (disconnected or periodic).
        """
        if self.directed:
            moduli = np.sort(np.abs(np.linalg.eigvals(self._W)))  # W is not symmetric: complex eigenvalues
        else:
            moduli = np.abs(np.linalg.eigvalsh(self._W))  # ascending eigenvalues; the last one is 1
        return float(min(1.0, moduli[:-1].max(initial=0.0)))

    @property
    def spectral_gap(self) -> float:
        """``1 - slem**2``: one round shrinks the squared distance to consensus by ``1 - gap``."""
        return 1.0 - self.slem**2

    def describe(self) -> str:
        """A multi-line summary for people: size, degrees, spectral gap, slem and the weights."""
        return describe(self)

    def __repr__(self) -> str:
        if self.directed:
            degrees = (f"max_out_degree={self.max_degree}, "
                       f"max_in_degree={max(len(nbrs) for nbrs in self._in)}")
            return (f"Topology(name={self.name!r}, n={self.n}, directed=True, edges={len(self.edges)}, {degrees}, "
                    f"spectral_gap={self.spectral_gap:.4g})")
        return (f"Topology(name={self.name!r}, n={self.n}, edges={self._graph.number_of_edges()}, "
                f"max_degree={self.max_degree}, spectral_gap={self.spectral_gap:.4g})")

    def _node(self, i: int) -> int:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < self.n:
            raise ValueError(f"node {i!r} is out of range: nodes are 0..{self.n - 1}")
        return i
