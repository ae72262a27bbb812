"""A communication graph of your own: a function of the number of workers ``n`` (and keys of your
own) that returns a ``networkx`` graph; gossip gives it the configured weights (``weights:``,
Metropolis-Hastings by default) and checks it as it checks the built-ins.

>>> ring_of_cliques(8, clique=4).number_of_edges()
14
"""

from __future__ import annotations

import networkx as nx


def ring_of_cliques(n: int, clique: int = 4) -> nx.Graph:
    """``n / clique`` complete graphs of ``clique`` workers (a rack, a node's GPUs), joined in a
    ring by one edge from the last worker of each to the first of the next."""
    if clique < 1 or n % clique:
        raise ValueError(f"ring_of_cliques: clique={clique} must divide n={n}")
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    for start in range(0, n, clique):
        graph.add_edges_from((start + a, start + b) for a in range(clique) for b in range(a + 1, clique))
        if n > clique:
            graph.add_edge(start + clique - 1, (start + clique) % n)
    return graph
