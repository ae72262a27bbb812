"""Checks that a graph and a mixing matrix form a valid gossip topology.

Gossip averages with ``x <- W x``; on an undirected graph that preserves the mean of the workers
and converges to it only if ``W`` is symmetric, non-negative and stochastic (hence doubly
stochastic) with weights on the graph's edges. On a directed graph (push-sum) ``W`` must be
non-negative and column-stochastic, ``W[i, j]`` off the diagonal only on an edge j -> i, so that
the sum of the workers' vectors is preserved. Every problem is reported before a run starts, one
line each.
"""

from __future__ import annotations

import networkx as nx
import numpy as np
from numpy.typing import ArrayLike

SYMMETRY_TOL = 1e-10
ROW_SUM_TOL = 1e-9


def check_graph(graph: object, require_connected: bool = True) -> None:
    """Fail unless ``graph`` is a simple graph or digraph on nodes 0..n-1 (connected, or strongly
    connected if directed, when required)."""
    if not isinstance(graph, nx.Graph) or graph.is_multigraph():
        raise ValueError(f"graph must be a networkx.Graph (undirected) or networkx.DiGraph (directed), "
                         f"got {type(graph).__name__}")
    n = graph.number_of_nodes()
    if n == 0:
        raise ValueError("graph has no nodes; a topology needs at least 1")
    nodes = list(graph)
    if not all(_is_index(v) for v in nodes) or sorted(nodes) != list(range(n)):
        shown = ", ".join(map(repr, nodes[:6])) + (", ..." if n > 6 else "")
        raise ValueError(f"graph nodes must be exactly 0..{n - 1}, got [{shown}] "
                         f"(from_networkx relabels any nodes)")
    loops = sorted(int(i) for i, _ in nx.selfloop_edges(graph))
    if loops:
        raise ValueError(f"graph has self loops at nodes {loops}; a node's own weight is the "
                         f"diagonal of W, not an edge")
    if require_connected and graph.is_directed() and not nx.is_strongly_connected(graph):
        parts = nx.number_strongly_connected_components(graph)
        raise ValueError(f"directed graph is not strongly connected ({parts} strongly connected components); "
                         f"push-sum needs a path from every node to every other")
    if require_connected and not graph.is_directed() and not nx.is_connected(graph):
        parts = nx.number_connected_components(graph)
        raise ValueError(f"graph is not connected ({parts} components); gossip needs a connected graph")


def check_mixing_matrix(W: ArrayLike, graph: nx.Graph) -> np.ndarray:
    """``W`` as a float64 copy, after checking it is a valid mixing matrix for ``graph``: symmetric
    and row-stochastic on an undirected graph, column-stochastic on a directed one."""
    try:
        W = np.array(W, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"W must be a numeric matrix: {exc}") from None
    n = graph.number_of_nodes()
    if W.shape != (n, n):
        raise ValueError(f"W has shape {W.shape}; expected ({n}, {n}) for a graph with {n} nodes")
    if not np.isfinite(W).all():
        raise ValueError(f"W has non-finite entries (NaN or inf) at {_first(~np.isfinite(W))}")
    if graph.is_directed():
        return _check_column_stochastic(W, graph)
    asymmetry = np.abs(W - W.T)
    if asymmetry.max() > SYMMETRY_TOL:
        i, j = _first(asymmetry > SYMMETRY_TOL)
        raise ValueError(f"W is not symmetric: W[{i},{j}] = {W[i, j]:.6g} but W[{j},{i}] = {W[j, i]:.6g} "
                         f"(tolerance {SYMMETRY_TOL:g})")
    _check_non_negative(W)
    row_error = np.abs(W.sum(axis=1) - 1.0)
    if row_error.max() > ROW_SUM_TOL:
        i = int(row_error.argmax())
        raise ValueError(f"rows of W must sum to 1: row {i} sums to {W[i].sum():.12g} "
                         f"(tolerance {ROW_SUM_TOL:g})")
    outside = (W != 0) & (nx.to_numpy_array(graph, nodelist=range(n)) == 0)
    np.fill_diagonal(outside, False)
    if outside.any():
        i, j = _first(outside)
        raise ValueError(f"W[{i},{j}] = {W[i, j]:.6g} but ({i}, {j}) is not an edge of the graph; "
                         f"off-diagonal weights must lie on edges")
    return W


def _check_column_stochastic(W: np.ndarray, graph: nx.DiGraph) -> np.ndarray:
    """``W`` after checking it is a push-sum matrix of ``graph``: each sender's column sums to 1."""
    _check_non_negative(W)
    column_error = np.abs(W.sum(axis=0) - 1.0)
    if column_error.max() > ROW_SUM_TOL:
        j = int(column_error.argmax())
        raise ValueError(f"columns of W must sum to 1 on a directed graph (node j splits its vector over "
                         f"itself and the nodes it sends to): column {j} sums to {W[:, j].sum():.12g} "
                         f"(tolerance {ROW_SUM_TOL:g})")
    n = len(W)
    outside = (W != 0) & (nx.to_numpy_array(graph, nodelist=range(n)).T == 0)  # W[i, j] needs j -> i
    np.fill_diagonal(outside, False)
    if outside.any():
        i, j = _first(outside)
        raise ValueError(f"W[{i},{j}] = {W[i, j]:.6g} but {j} -> {i} is not an edge of the graph; "
                         f"off-diagonal weights W[i, j] must lie on edges j -> i")
    return W


def _check_non_negative(W: np.ndarray) -> None:
    if (W < 0).any():
        i, j = _first(W < 0)
        raise ValueError(f"W has negative entries: W[{i},{j}] = {W[i, j]:.6g}; weights must be >= 0")


def _is_index(node: object) -> bool:
    return isinstance(node, (int, np.integer)) and not isinstance(node, bool)


def _first(mask: np.ndarray) -> tuple[int, int]:
    """The first (row, column) where ``mask`` is true."""
    i, j = np.argwhere(mask)[0]
    return int(i), int(j)
