"""Print the degree / spectral gap / slem table of docs/topologies.md: ``python scripts/topology_table.py``.

One row per topology and size n (8, 16, 32, 64 unless given with ``--sizes``), all with the
default Metropolis-Hastings weights: ring, torus (the most square rows x cols, as
``topologies.build`` picks it), expander (degree 4, seed 0), hypercube, exponential, complete
and star. Output is a markdown table; paste it into the docs page as is.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import topologies  # noqa: E402

# (label, topologies.build name, extra parameters)
FAMILIES = [
    ("ring", "ring", {}),
    ("torus", "torus", {}),
    ("expander (degree 4, seed 0)", "expander", {"degree": 4, "seed": 0}),
    ("hypercube", "hypercube", {}),
    ("exponential", "exponential", {}),
    ("complete", "complete", {}),
    ("star", "star", {}),
]
SIZES = (8, 16, 32, 64)


def _label(label: str, topology: topologies.Topology) -> str:
    """The family's label, with the torus sides and the hypercube dimension that were built."""
    sides = re.search(r"rows=(\d+), cols=(\d+)", topology.name)
    if sides:
        return f"{label} {sides[1]} x {sides[2]}"
    dim = re.search(r"hypercube\(dim=(\d+)", topology.name)
    return f"{label} (dim {dim[1]})" if dim else label


def _degree(topology: topologies.Topology) -> str:
    degrees = sorted({topology.degree(i) for i in range(topology.n)})
    return str(degrees[0]) if len(degrees) == 1 else f"{degrees[0]}-{degrees[-1]}"


def table(sizes: tuple[int, ...] = SIZES) -> str:
    """The markdown table: topology, n, degree (min-max), spectral gap, slem."""
    lines = ["| topology | n | degree | spectral gap | slem |", "|---|---:|---:|---:|---:|"]
    for label, name, params in FAMILIES:
        for n in sizes:
            t = topologies.build(name, n, **params)
            lines.append(f"| {_label(label, t)} | {n} | {_degree(t)} | "
                         f"{t.spectral_gap:.4f} | {t.slem:.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), metavar="N",
                        help="numbers of nodes (powers of 2 for the hypercube; default 8 16 32 64)")
    args = parser.parse_args(argv)
    try:
        print(table(tuple(args.sizes)))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
