"""Draw the graphs of docs/topologies.md as small PNGs: ``python scripts/draw_topologies.py [--out docs/img]``.

One 300 x 300 px image per graph: ring 16, torus 4x4, expander 16 (degree 4, seed 0), hypercube 16,
exponential 16, star 8, complete 8, Erdos-Renyi 16 (p = 0.3, seed 0), and the one-peer exponential
graph on 8 nodes at steps 0, 1 and 2. Every graph has the default Metropolis-Hastings weights; the
title gives its degree and spectral gap. matplotlib is the ``plot`` extra.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import networkx as nx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import topologies  # noqa: E402

PIXELS, DPI = 300, 100


def grid_layout(rows: int, cols: int) -> dict[int, tuple[float, float]]:
    """Node ``r * cols + c`` at column c, row r (row 0 on top), as ``topologies.torus`` numbers them."""
    return {r * cols + c: (c, -r) for r in range(rows) for c in range(cols)}


def hypercube_layout(dim: int) -> dict[int, tuple[float, float]]:
    """Bits 0 and 1 span a square, bit 2 shifts it obliquely (a drawn cube) and bit 3 scales the
    cube out around its centre (the cube-in-a-cube picture of the tesseract); dim <= 4."""
    shifts = np.array([[1.0, 0.0], [0.0, 1.0], [0.3, 0.2]])
    corners = {i: sum((shifts[b] for b in range(min(dim, 3)) if i >> b & 1), np.zeros(2)) for i in range(2**dim)}
    centre = shifts[:min(dim, 3)].sum(axis=0) / 2
    return {i: tuple(centre + (2.6 if i >> 3 & 1 else 1.0) * (p - centre)) for i, p in corners.items()}


def star_layout(n: int) -> dict[int, tuple[float, float]]:
    """Node 0 in the middle, the others on a circle around it."""
    leaves = nx.circular_layout(range(1, n))
    return {0: (0.0, 0.0), **{i: tuple(p) for i, p in leaves.items()}}


def circle(n: int) -> dict[int, tuple[float, float]]:
    return {i: tuple(p) for i, p in nx.circular_layout(range(n)).items()}


def figures() -> list[tuple[str, topologies.Topology, dict]]:
    """(file stem, topology, node positions) of every drawing."""
    one_peer = topologies.OnePeerExponential(8)
    made = [
        ("ring16", topologies.ring(16), circle(16)),
        ("torus4x4", topologies.torus(4, 4), grid_layout(4, 4)),
        ("expander16", topologies.expander(16, degree=4, seed=0), circle(16)),
        ("hypercube16", topologies.hypercube(4), hypercube_layout(4)),
        ("exponential16", topologies.exponential(16), circle(16)),
        ("star8", topologies.star(8), star_layout(8)),
        ("complete8", topologies.complete(8), circle(8)),
        ("erdos_renyi16", topologies.erdos_renyi(16, 0.3, seed=0), circle(16)),
    ]
    made += [(f"one_peer_exponential8_step{t}", one_peer(t), circle(8)) for t in range(3)]
    return made


def title(stem: str, topology: topologies.Topology) -> str:
    degrees = sorted({topology.degree(i) for i in range(topology.n)})
    degree = str(degrees[0]) if len(degrees) == 1 else f"{degrees[0]}-{degrees[-1]}"
    kind = topology.name.split("(")[0]
    head = f"{kind}, step {stem[-1]}" if kind == "one_peer_exponential" else kind
    return f"{head} (n={topology.n})\ndegree {degree}, gap {topology.spectral_gap:.3f}"


def draw(plt, stem: str, topology: topologies.Topology, positions: dict, out: Path) -> Path:
    """One PNG of ``topology``; torus wrap-around edges are drawn as arcs."""
    fig, ax = plt.subplots(figsize=(PIXELS / DPI, PIXELS / DPI), dpi=DPI)
    graph = topology.graph
    straight, arcs = [], []
    for i, j in topology.edges:
        (xi, yi), (xj, yj) = positions[i], positions[j]
        wraps = stem.startswith("torus") and abs(xi - xj) + abs(yi - yj) > 1.5
        (arcs if wraps else straight).append((i, j))
    nx.draw_networkx_edges(graph, positions, edgelist=straight, ax=ax, width=0.8, edge_color="#555555")
    if arcs:
        nx.draw_networkx_edges(graph, positions, edgelist=arcs, ax=ax, width=0.8, edge_color="#999999",
                               arrows=True, arrowstyle="-", connectionstyle="arc3,rad=0.35")
    nx.draw_networkx_nodes(graph, positions, ax=ax, node_size=150, node_color="#4c72b0")
    nx.draw_networkx_labels(graph, positions, ax=ax, font_size=6, font_color="white")
    ax.set_title(title(stem, topology), fontsize=8)
    ax.set_axis_off()
    ax.margins(0.12)
    fig.tight_layout(pad=0.2)
    path = out / f"{stem}.png"
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "img",
                        help="folder for the PNGs (default: docs/img of this checkout)")
    args = parser.parse_args(argv)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print('error: drawing needs matplotlib: pip install -e ".[plot]"', file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for stem, topology, positions in figures():
        path = draw(plt, stem, topology, positions, args.out)
        print(f"{path} ({path.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
