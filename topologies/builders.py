"""Topology builders: named graph families with their mixing matrices, and ``build`` for configs.

Every builder returns a validated :class:`Topology` on nodes 0..n-1. The undirected ones take
``weights``, a scheme name from ``topologies.weights.SCHEMES`` or a callable ``graph -> W``; the
directed ones (``directed_exponential``) take none: their weights are always
:func:`topologies.weights.column_uniform`, ``1/(out-degree + 1)``.
"""

from __future__ import annotations

import inspect
import math
import random
from collections.abc import Callable, Iterable

import networkx as nx
import numpy as np
from numpy.typing import ArrayLike

from topologies import _checks
from topologies.topology import Topology
from topologies.validation import SYMMETRY_TOL
from topologies.weights import SchemeLike, column_uniform, mixing_matrix, scheme_name

MAX_TRIES = 100  # random graphs are drawn again (seed, seed+1, ...; or from one stream) until connected


def ring(n: int, weights: SchemeLike = "metropolis_hastings") -> Topology:
    """The cycle 0-1-...-(n-1)-0; one node for n=1, one edge for n=2.

    >>> ring(5).neighbors(0)
    [1, 4]
    """
    n = _checks.integer(n, "ring: n", 1)
    return _topology(_graph(n, ((i, (i + 1) % n) for i in range(n))), weights, "ring", n=n)


def torus(rows: int, cols: int, weights: SchemeLike = "metropolis_hastings") -> Topology:
    """The rows x cols grid with wrap-around; node ``r * cols + c`` sits at row r, column c.

    A side of length 2 gives one edge between its two nodes, a side of length 1 none.

    >>> torus(3, 4).neighbors(0)
    [1, 3, 4, 8]
    """
    rows = _checks.integer(rows, "torus: rows", 1)
    cols = _checks.integer(cols, "torus: cols", 1)
    pairs = [(r * cols + c, other) for r in range(rows) for c in range(cols)
             for other in (r * cols + (c + 1) % cols, (r + 1) % rows * cols + c)]
    return _topology(_graph(rows * cols, pairs), weights, "torus", rows=rows, cols=cols)


def expander(n: int, degree: int, seed: int = 0, weights: SchemeLike = "metropolis_hastings") -> Topology:
    """A random ``degree``-regular graph, redrawn with seed+1, seed+2, ... until connected.

    Random regular graphs of degree >= 3 are expanders with high probability: their spectral gap
    stays bounded away from 0 as n grows, at a constant number of messages per node.

    >>> expander(10, 3).max_degree
    3
    """
    n = _checks.integer(n, "expander: n", 2)
    degree = _checks.integer(degree, "expander: degree", 1)
    seed = _checks.integer(seed, "expander: seed", 0)
    if degree >= n or n * degree % 2:
        raise ValueError(f"expander: need degree < n and n * degree even, got n={n}, degree={degree}")
    graph = _connected(lambda k: nx.random_regular_graph(degree, n, seed=seed + k), _seed_range(seed),
                       f"expander: no connected {degree}-regular graph on {n} nodes", "a larger degree")
    return _topology(graph, weights, "expander", n=n, degree=degree, seed=seed)


def complete(n: int, weights: SchemeLike = "metropolis_hastings") -> Topology:
    """Every pair of nodes connected: exact averaging in one round with the default weights.

    >>> complete(4).spectral_gap > 0.999
    True
    """
    n = _checks.integer(n, "complete: n", 1)
    return _topology(nx.complete_graph(n), weights, "complete", n=n)


def star(n: int, weights: SchemeLike = "metropolis_hastings") -> Topology:
    """Node 0 connected to each of nodes 1..n-1.

    >>> star(4).neighbors(0), star(4).neighbors(2)
    ([1, 2, 3], [0])
    """
    n = _checks.integer(n, "star: n", 1)
    return _topology(_graph(n, ((0, i) for i in range(1, n))), weights, "star", n=n)


def hypercube(dim: int, weights: SchemeLike = "metropolis_hastings") -> Topology:
    """The ``dim``-dimensional hypercube on 2**dim nodes: i and j are neighbours when their bits
    differ in exactly one place.

    >>> hypercube(3).neighbors(5)
    [1, 4, 7]
    """
    dim = _checks.integer(dim, "hypercube: dim", 0)
    n = 2**dim
    pairs = ((i, i ^ (1 << b)) for i in range(n) for b in range(dim))
    return _topology(_graph(n, pairs), weights, "hypercube", dim=dim)


def exponential(n: int, weights: SchemeLike = "metropolis_hastings") -> Topology:
    """The static exponential graph: node i is linked to i + 2**k and i - 2**k (mod n) for every
    2**k < n, so degree is about 2 log2 n.

    >>> exponential(16).neighbors(0)
    [1, 2, 4, 8, 12, 14, 15]
    """
    n = _checks.integer(n, "exponential: n", 1)
    pairs = ((i, (i + 2**k) % n) for i in range(n) for k in range((n - 1).bit_length()))
    return _topology(_graph(n, pairs), weights, "exponential", n=n)


def directed_exponential(n: int) -> Topology:
    """The directed exponential graph of Stochastic Gradient Push: node i sends to i + 2**k (mod n)
    for every 2**k < n, so out- and in-degree are ceil(log2 n), with push-sum weights
    ``1/(out-degree + 1)``.

    >>> t = directed_exponential(16)
    >>> t.out_neighbors(0), t.in_neighbors(0), t.weight(1, 0)
    ([1, 2, 4, 8], [8, 12, 14, 15], 0.2)
    """
    n = _checks.integer(n, "directed_exponential: n", 1)
    pairs = ((i, (i + 2**k) % n) for i in range(n) for k in range((n - 1).bit_length()))
    return _directed_topology(_graph(n, pairs, directed=True), "directed_exponential", n=n)


def erdos_renyi(n: int, p: float, seed: int = 0, weights: SchemeLike = "metropolis_hastings") -> Topology:
    """A G(n, p) random graph, each edge present with probability p, redrawn with seed+1,
    seed+2, ... until connected.

    >>> erdos_renyi(8, 1.0).max_degree
    7
    """
    n = _checks.integer(n, "erdos_renyi: n", 1)
    p = _checks.probability(p, "erdos_renyi: p")
    seed = _checks.integer(seed, "erdos_renyi: seed", 0)
    graph = _connected(lambda k: nx.gnp_random_graph(n, p, seed=seed + k), _seed_range(seed),
                       f"erdos_renyi: no connected graph with n={n}, p={p:g}", "a larger p")
    return _topology(graph, weights, "erdos_renyi", n=n, p=p, seed=seed)


def directed_erdos_renyi(n: int, p: float, seed: int = 0) -> Topology:
    """A directed G(n, p) random graph, each edge i -> j present with probability p, drawn again
    from the same seeded stream until strongly connected (so that every seed gives its own graph,
    however many draws fail), with push-sum weights ``1/(out-degree + 1)``.
    Its out-degrees usually differ from node to node, and then W is column- but not row-stochastic:
    plain gossip converges to a weighted average, and push-sum's de-biasing is needed for the average.

    >>> t = directed_erdos_renyi(6, 0.5, seed=3)
    >>> t.directed, t.W.sum(axis=0).round(12).tolist() == [1.0] * 6, t.W.sum(axis=1).round(12).tolist() == [1.0] * 6
    (True, True, False)
    """
    n = _checks.integer(n, "directed_erdos_renyi: n", 1)
    p = _checks.probability(p, "directed_erdos_renyi: p")
    seed = _checks.integer(seed, "directed_erdos_renyi: seed", 0)
    stream = random.Random(seed)  # one stream: a seed whose first draws fail does not fall onto the next seed's graph
    graph = _connected(lambda k: nx.gnp_random_graph(n, p, seed=stream, directed=True), f"draws of seed {seed}",
                       f"directed_erdos_renyi: no strongly connected graph with n={n}, p={p:g}", "a larger p")
    return _directed_topology(graph, "directed_erdos_renyi", n=n, p=p, seed=seed)


def from_networkx(G: nx.Graph | nx.DiGraph, weights: SchemeLike | None = None) -> Topology:
    """Any connected networkx graph, its nodes relabelled 0..n-1 in sorted order.

    An undirected graph gets ``weights`` (default Metropolis-Hastings); a strongly connected
    ``nx.DiGraph`` gets the push-sum weights ``1/(out-degree + 1)`` and takes no ``weights``.

    >>> from_networkx(nx.Graph([("b", "a"), ("b", "c")])).neighbors(1)
    [0, 2]
    >>> from_networkx(nx.DiGraph([("a", "b"), ("b", "a"), ("b", "c"), ("c", "a")])).W.round(2).tolist()
    [[0.5, 0.33, 0.5], [0.5, 0.33, 0.0], [0.0, 0.33, 0.5]]
    """
    if not isinstance(G, nx.Graph):
        raise ValueError(f"from_networkx: G must be a networkx graph, got {type(G).__name__}")
    try:
        order = sorted(G.nodes)
    except TypeError:
        raise ValueError("from_networkx: graph node labels must be sortable (all of one type)") from None
    graph = nx.relabel_nodes(G, {node: k for k, node in enumerate(order)})
    if graph.is_directed():
        _checks.weights_argument("from_networkx", weights, directed=True)  # fails on any scheme
        return _directed_topology(graph, "from_networkx", n=len(order))
    return _topology(graph, "metropolis_hastings" if weights is None else weights, "from_networkx", n=len(order))


def from_matrix(W: ArrayLike) -> Topology:
    """The topology whose graph is the nonzero off-diagonal pattern of ``W``: undirected if ``W``
    is symmetric, otherwise directed with an edge j -> i wherever ``W[i, j] != 0`` (then ``W`` must
    be column-stochastic).

    >>> from_matrix([[0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]).edges
    [(0, 1), (1, 2)]
    >>> from_matrix([[0.5, 0, 1], [0.5, 0.5, 0], [0, 0.5, 0]]).edges
    [(0, 1), (1, 2), (2, 0)]
    """
    W = np.asarray(W, dtype=np.float64)
    if W.ndim != 2 or W.shape[0] != W.shape[1]:
        raise ValueError(f"from_matrix: W must be a square matrix, got shape {W.shape}")
    directed = bool(np.abs(W - W.T).max(initial=0.0) > SYMMETRY_TOL)  # NaN compares False: checked later
    graph = _graph(len(W), ((j, i) for i, j in np.argwhere(W != 0).tolist()), directed=directed)
    return Topology(graph, W, name=f"from_matrix(n={len(W)})")


def matrix(n: int, path: str) -> Topology:
    """The topology of the mixing matrix stored in ``path``: a ``.npy`` file, or a text file of
    ``n`` rows of ``n`` numbers (``numpy.loadtxt``), checked as :func:`from_matrix` checks ``W``.

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "W.txt")
    >>> np.savetxt(path, [[0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    >>> matrix(3, path).edges
    [(0, 1), (1, 2)]
    """
    try:
        W = np.load(path) if str(path).endswith(".npy") else np.loadtxt(path, ndmin=2)
    except (OSError, ValueError) as exc:
        raise ValueError(f"matrix: cannot read {str(path)!r} ({' '.join(str(exc).split())})") from None
    if W.shape != (n, n):
        raise ValueError(f"matrix: {str(path)!r} holds a matrix of shape {W.shape}; expected ({n}, {n}) for n={n} workers")
    try:
        topology = from_matrix(W)
    except ValueError as exc:
        raise ValueError(f"matrix: {str(path)!r}: {exc}") from None
    topology.name = f"matrix({path})"
    return topology


def lazy(topology: Topology) -> Topology:
    """The same graph mixed with ``(W + I) / 2``: every node keeps at least half of its own
    vector. Every eigenvalue of the lazy W is at least 0, which D² needs (above −1/3), at the cost
    of mixing about half as fast; a doubly or column stochastic W stays so.

    >>> ring(4).W[0].round(4).tolist(), lazy(ring(4)).W[0].round(4).tolist()
    ([0.3333, 0.3333, 0.0, 0.3333], [0.6667, 0.1667, 0.0, 0.1667])
    """
    return Topology(topology.graph, (topology.W + np.eye(topology.n)) / 2, name=f"lazy {topology.name}",
                    require_connected=False)


BUILDERS: dict[str, Callable[..., Topology]] = {
    "ring": ring,
    "torus": torus,
    "expander": expander,
    "complete": complete,
    "star": star,
    "hypercube": hypercube,
    "exponential": exponential,
    "erdos_renyi": erdos_renyi,
    "directed_exponential": directed_exponential,
    "directed_erdos_renyi": directed_erdos_renyi,
    "matrix": matrix,
}


def builder_parameters(name: str) -> list[str]:
    """The parameters of builder ``name`` in signature order, without ``weights``.

    >>> builder_parameters("expander")
    ['n', 'degree', 'seed']
    """
    builder = _checks.choose("topology", name, BUILDERS)
    return [p for p in inspect.signature(builder).parameters if p != "weights"]


def build(name: str, n: int, weights: SchemeLike | None = None, **params: object) -> Topology:
    """The topology ``name`` on ``n`` workers: the entry point for configs.

    ``weights=None`` is the graph's default: Metropolis-Hastings on an undirected graph,
    ``1/(out-degree + 1)`` on a directed one, which takes no other. ``params`` are the builder's
    other parameters: torus ``rows``/``cols`` (both optional: the most square factorisation of n
    is the default), expander ``degree`` (and ``seed``), erdos_renyi ``p`` (and ``seed``). A
    hypercube's dimension is log2 n.

    >>> build("torus", 12).name
    'torus(rows=3, cols=4, weights=metropolis_hastings)'
    """
    builder = _checks.choose("topology", name, BUILDERS)
    _checks.parameters(name, params, [p for p in builder_parameters(name) if p not in ("n", "dim")])
    if name == "torus":
        sizes = _torus_shape(n, params.pop("rows", None), params.pop("cols", None))
    elif name == "hypercube":
        sizes = {"dim": _checks.log2_exact(n, "hypercube: n")}
    else:
        sizes = {"n": n}
    scheme = _checks.weights_argument(name, weights, _checks.directed_factory(builder))
    try:
        inspect.signature(builder).bind(**sizes, **params, **scheme)
    except TypeError as exc:  # a required parameter such as expander's degree is missing
        raise ValueError(f"{name}: {exc}") from None
    return builder(**sizes, **params, **scheme)


def _torus_shape(n: int, rows: int | None, cols: int | None) -> dict[str, int]:
    """Rows and columns with rows * cols == n; the most square (rows <= cols) if neither is given."""
    n = _checks.integer(n, "torus: n", 1)
    given = {key: _checks.integer(side, f"torus: {key}", 1)
             for key, side in (("rows", rows), ("cols", cols)) if side is not None}
    if not given:
        rows = max(r for r in range(1, math.isqrt(n) + 1) if n % r == 0)
        return {"rows": rows, "cols": n // rows}
    if len(given) == 1:
        (key, side), = given.items()
        if n % side:
            raise ValueError(f"torus: {key}={side} does not divide n={n}")
        return {key: side, "cols" if key == "rows" else "rows": n // side}
    if given["rows"] * given["cols"] != n:
        raise ValueError(f"torus: rows * cols must equal n, got rows={rows}, cols={cols}, n={n}")
    return given


def _graph(n: int, pairs: Iterable[tuple[int, int]], directed: bool = False) -> nx.Graph:
    """Nodes 0..n-1 and the given pairs as edges (i -> j if ``directed``); pairs (i, i) that wrap
    onto themselves are dropped."""
    graph = nx.DiGraph() if directed else nx.Graph()
    graph.add_nodes_from(range(n))
    graph.add_edges_from((i, j) for i, j in pairs if i != j)
    return graph


def _connected(draw: Callable[[int], nx.Graph], tried: str, failure: str, hint: str) -> nx.Graph:
    """The first connected (strongly, if directed) graph of ``draw(0)``, ``draw(1)``, ..., at most
    ``MAX_TRIES`` draws; ``tried`` says which draws they were, for the error."""
    for k in range(MAX_TRIES):
        graph = draw(k)
        if (nx.is_strongly_connected if graph.is_directed() else nx.is_connected)(graph):
            return graph
    raise ValueError(f"{failure} in {MAX_TRIES} tries ({tried}); try {hint}")


def _seed_range(seed: int) -> str:
    """The seeds of the draws ``seed + k`` that :func:`_connected` tries."""
    return f"seeds {seed}..{seed + MAX_TRIES - 1}"


def _topology(graph: nx.Graph, weights: SchemeLike, kind: str, **shown: object) -> Topology:
    """``graph`` with its ``weights``, named like ``ring(n=8, weights=uniform)``."""
    label = ", ".join(f"{k}={v}" for k, v in {**shown, "weights": scheme_name(weights)}.items())
    return Topology(graph, mixing_matrix(graph, weights), name=f"{kind}({label})")


def _directed_topology(graph: nx.DiGraph, kind: str, **shown: object) -> Topology:
    """``graph`` with the push-sum weights ``1/(out-degree + 1)``, named like ``directed_exponential(n=8)``."""
    label = ", ".join(f"{k}={v}" for k, v in shown.items())
    return Topology(graph, column_uniform(graph), name=f"{kind}({label})")
