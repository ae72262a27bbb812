"""Weight schemes: the mixing matrix ``W`` of a graph.

The schemes of ``SCHEMES`` are for undirected graphs: each puts a weight on each edge that depends
only on degrees, the same both ways (so ``W`` is symmetric), and fills the diagonal so that each
row sums to 1 (so ``W`` is doubly stochastic). A directed graph takes :func:`column_uniform`, the
push-sum weights, whose columns sum to 1. A graph's nodes must be 0..n-1; ``from_networkx``
relabels any others.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Union

import networkx as nx
import numpy as np

from topologies._checks import choose
from topologies.validation import check_graph

Scheme = Callable[[nx.Graph], np.ndarray]
SchemeLike = Union[str, Scheme]


def metropolis_hastings(G: nx.Graph) -> np.ndarray:
    """Metropolis-Hastings weights, the default: ``W[i, j] = 1 / (1 + max(d_i, d_j))`` on edges.

    Needs only the degrees of the two ends, so it is local, and it keeps every diagonal entry
    positive (no periodic oscillation) on any graph.

    >>> metropolis_hastings(nx.path_graph(3)).round(4).tolist()
    [[0.6667, 0.3333, 0.0], [0.3333, 0.3333, 0.3333], [0.0, 0.3333, 0.6667]]
    """
    return _edge_weighted(G, "metropolis_hastings", lambda d_i, d_j: 1.0 / (1 + max(d_i, d_j)))


def uniform(G: nx.Graph) -> np.ndarray:
    """The same weight ``1 / (d_max + 1)`` on every edge, ``d_max`` the largest degree.

    On a regular graph every node then weighs itself and each neighbour equally (1/3 on a ring).

    >>> uniform(nx.cycle_graph(4)).round(4)[0].tolist()
    [0.3333, 0.3333, 0.0, 0.3333]
    """
    weight = 1.0 / (_max_degree(G) + 1)
    return _edge_weighted(G, "uniform", lambda d_i, d_j: weight)


def max_degree(G: nx.Graph) -> np.ndarray:
    """The max-degree scheme: ``1 / d_max`` on every edge, ``1 - d_i / d_max`` on the diagonal.

    The diagonal is 0 on a regular graph, which is allowed but can make ``W`` periodic: on a
    bipartite regular graph (two nodes, an even ring, a hypercube) ``W`` has eigenvalue -1, so
    slem is 1 and the spectral gap 0, and gossip oscillates instead of converging.

    >>> max_degree(nx.path_graph(3)).tolist()
    [[0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.5, 0.5]]
    """
    d_max = _max_degree(G)
    return _edge_weighted(G, "max_degree", lambda d_i, d_j: 1.0 / d_max)


def column_uniform(G: nx.DiGraph) -> np.ndarray:
    """Push-sum weights on a directed graph: ``W[i, j] = 1 / (out_degree(j) + 1)`` on every edge
    j -> i and on the diagonal, so node j splits its vector equally over itself and the nodes it
    sends to and every column sums to 1 (the uniform weights of SGP and Bluefog).

    >>> column_uniform(nx.DiGraph([(0, 1), (0, 2), (1, 0), (2, 0)])).round(4).tolist()
    [[0.3333, 0.5, 0.5], [0.3333, 0.5, 0.0], [0.3333, 0.0, 0.5]]
    """
    _check_kind(G, "column_uniform", directed=True)
    W = np.zeros((G.number_of_nodes(),) * 2)
    for j, out_degree in G.out_degree:
        W[[j, *G.successors(j)], j] = 1.0 / (out_degree + 1)
    return W


SCHEMES: dict[str, Scheme] = {
    "metropolis_hastings": metropolis_hastings,
    "uniform": uniform,
    "max_degree": max_degree,
}


def mixing_matrix(G: nx.Graph, scheme: SchemeLike = "metropolis_hastings") -> np.ndarray:
    """``W`` for ``G`` by a scheme named in ``SCHEMES`` or a callable ``G -> W`` (a directed graph
    takes :func:`column_uniform`).

    >>> mixing_matrix(nx.complete_graph(2), "uniform").tolist()
    [[0.5, 0.5], [0.5, 0.5]]
    """
    make = scheme if callable(scheme) else choose("weight scheme", scheme, SCHEMES)
    return np.asarray(make(G), dtype=np.float64)


def scheme_name(scheme: SchemeLike) -> str:
    """A scheme's name for labels: the string itself, or the callable's ``__name__``."""
    return scheme if isinstance(scheme, str) else getattr(scheme, "__name__", repr(scheme))


def _max_degree(G: nx.Graph) -> int:
    return max((d for _, d in G.degree), default=0)


def _check_kind(G: nx.Graph, scheme: str, directed: bool) -> None:
    """Fail unless ``G`` is a valid graph, directed exactly when the scheme ``scheme`` is."""
    check_graph(G, require_connected=False)
    if G.is_directed() and not directed:
        raise ValueError(f"weight scheme {scheme!r} is for undirected graphs; a directed graph takes "
                         f"column_uniform, 1/(out-degree + 1)")
    if directed and not G.is_directed():
        raise ValueError(f"weight scheme {scheme!r} is for directed graphs (networkx.DiGraph); an undirected "
                         f"graph takes one of: {', '.join(SCHEMES)}")


def _edge_weighted(G: nx.Graph, scheme: str, edge_weight: Callable[[int, int], float]) -> np.ndarray:
    """``W`` with ``edge_weight(d_i, d_j)`` on each edge and the rest of each row on the diagonal."""
    _check_kind(G, scheme, directed=False)
    W = np.zeros((G.number_of_nodes(),) * 2)
    for i, j in G.edges:
        W[i, j] = W[j, i] = edge_weight(G.degree[i], G.degree[j])
    # A diagonal that is 0 in exact arithmetic can come out as -1e-16; clip it to 0.
    np.fill_diagonal(W, np.maximum(1.0 - W.sum(axis=1), 0.0))
    return W
