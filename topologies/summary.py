"""A human-readable summary of a topology: what ``Topology.describe`` and the command line print.

Small topologies show the whole weight matrix; larger ones group the rows (on a directed graph:
the columns, what each sender gives out) that carry the same weights, so a 64-node ring or
expander still fits on a screen.
"""

from __future__ import annotations

from collections import Counter
from typing import Protocol

import networkx as nx
import numpy as np


class Described(Protocol):
    """What a summary reads of a topology; :class:`topologies.Topology` has it all (this module
    sits below it: ``Topology.describe`` calls :func:`describe`)."""

    name: str

    @property
    def n(self) -> int: ...

    @property
    def directed(self) -> bool: ...

    @property
    def graph(self) -> nx.Graph: ...

    @property
    def edges(self) -> list[tuple[int, int]]: ...

    @property
    def W(self) -> np.ndarray: ...

    @property
    def spectral_gap(self) -> float: ...

    @property
    def slem(self) -> float: ...

    def degree(self, i: int) -> int: ...

    def weight(self, i: int, j: int) -> float: ...

    def out_neighbors(self, i: int) -> list[int]: ...

    def in_neighbors(self, i: int) -> list[int]: ...

FULL_MATRIX_MAX_N = 12


def describe(topology: Described) -> str:
    """Name, size, degrees, spectral gap, slem and weights of ``topology``, one fact per line."""
    if topology.directed:
        connected = "strongly connected" if nx.is_strongly_connected(topology.graph) else "not strongly connected"
        edges = f"directed edges {len(topology.edges)}, {connected}, W column-stochastic (push-sum)"
        degrees = [*_degree_lines("out-degree", [len(topology.out_neighbors(i)) for i in range(topology.n)]),
                   *_degree_lines("in-degree", [len(topology.in_neighbors(i)) for i in range(topology.n)])]
    else:
        connected = "connected" if nx.is_connected(topology.graph) else "not connected"
        edges = f"edges {len(topology.edges)}, {connected}"
        degrees = _degree_lines("degree", [topology.degree(i) for i in range(topology.n)])
    lines = [
        topology.name or "topology",
        f"  nodes {topology.n}, {edges}",
        *degrees,
        f"  spectral gap {topology.spectral_gap:.6g} (= 1 - slem^2), slem {topology.slem:.6g}",
        *_weight_lines(topology),
    ]
    return "\n".join(lines)


def _degree_lines(kind: str, per_node: list[int]) -> list[str]:
    degrees = np.array(per_node)
    if degrees.min() == degrees.max():
        return [f"  {kind} {degrees[0]} at every node"]
    prefix = "    per node "
    return [f"  {kind}s min {degrees.min()}, max {degrees.max()}, mean {degrees.mean():.3g}",
            prefix + np.array2string(degrees, max_line_width=100, prefix=prefix)]


def _weight_lines(topology: Described) -> list[str]:
    if topology.n <= FULL_MATRIX_MAX_N:
        prefix = "    "
        matrix = np.array2string(topology.W, max_line_width=200, prefix=prefix,
                                 formatter={"float_kind": lambda w: f"{w:6.4f}" if w else "     ."})
        return ["  weights W:", prefix + matrix]
    groups: dict[str, list[int]] = {}
    for j in range(topology.n):
        groups.setdefault(_sent_weights(topology, j), []).append(j)
    line = "column" if topology.directed else "row"
    given = "weights sent to out-neighbours" if topology.directed else "neighbour weights"
    return [f"  weights by {line} (own weight | {given} x count):",
            *(f"    {line}{'s' if len(lines) > 1 else ''} {_ranges(lines)}: {weights}"
              for weights, lines in groups.items())]


def _sent_weights(topology: Described, j: int) -> str:
    """Column j of W: j's own weight and the weights ``W[i, j]`` of the nodes i it sends to (on an
    undirected topology W is symmetric, so this is row j too)."""
    counts = Counter(f"{topology.weight(i, j):.4g}" for i in topology.out_neighbors(j))
    sent = ", ".join(f"{w} x{c}" for w, c in sorted(counts.items(), key=lambda wc: -float(wc[0])))
    return f"own {topology.weight(j, j):.4g} | {sent or 'none'}"


def _ranges(rows: list[int]) -> str:
    """Sorted rows as runs: [0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8'."""
    runs: list[list[int]] = []
    for r in rows:
        if runs and r == runs[-1][-1] + 1:
            runs[-1][-1] = r
        else:
            runs.append([r, r])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
