"""The consensus study of the PowerGossip paper (Figure 1): pure gossip, no gradients.

    python scripts/consensus.py --data random|structured --workers 8 --topology ring --steps N \\
        --algorithms dpsgd,powergossip,powergossip-random [--link-drop 0,0.1,0.3] --out DIR

Each worker starts from its own 100×100 matrix — standard normal (``random``) or a crop of a real
photograph (``structured``: matplotlib's sample image of Grace Hopper, in grey; the paper used
64×64 faces) — and the algorithms gossip on the ring with W = 1/3, one round per step. Writes
``DIR/consensus.csv`` (``algorithm,step,bytes_per_worker,error,relative_error``; error =
``1/n Σ ‖x_i − x̄‖²_F``, step 0 included) and ``DIR/consensus.png`` when matplotlib is installed.
The runs go through the real network and algorithm classes, so the script also works under
torchrun. A label ``name@gamma`` overrides an algorithm's consensus step size; ``--sweep`` tries a
log grid of step sizes for every label that has one and keeps the best. ``--link-drop`` runs every
label once per probability that an edge is down in a round (``faults.link_drop``), labelled
``label link_drop=p`` when a probability is not 0.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

import topologies
from gossip.algorithms import ALGORITHMS
from gossip.config import OptimizerConfig
from gossip.comm.distributed import Placement, join, leave
from gossip.comm.faults import LinkFaults
from gossip.comm.messages import Network
from gossip.comm.seeding import generator
from gossip.algorithms.worker import Worker

SIZE = 100

# label -> (algorithm, options); "gamma" is what `label@gamma` and --sweep change.
LABELS: dict[str, tuple[str, dict]] = {
    "dpsgd": ("dpsgd", {}),
    "powergossip": ("powergossip", {"rank": 1, "iterations": 1, "warm_start": True}),
    "powergossip-random": ("powergossip", {"rank": 1, "iterations": 1, "warm_start": False}),
    "choco-sign": ("choco", {"codec": "sign", "gamma": 1.0}),
    "choco-topk": ("choco", {"codec": {"name": "topk", "fraction": 0.01}, "gamma": 0.02}),
    "choco-qsgd": ("choco", {"codec": {"name": "qsgd", "levels": 127}, "gamma": 1.0}),
    "deepsqueeze-sign": ("deepsqueeze", {"codec": "sign", "gamma": 0.02}),
    "moniqua": ("moniqua", {"theta": 4.0, "bits": 2, "gamma": 0.005}),
}
SWEEP = [10 ** (k / 4) for k in range(-12, 1)]  # 1e-3 .. 1


class Matrix(nn.Module):
    """A worker's whole model: one matrix."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = nn.Parameter(value.clone())


def starting_matrices(data: str, workers: int, seed: int) -> list[torch.Tensor]:
    """One 100×100 starting matrix per worker."""
    if data == "random":
        return [torch.randn(SIZE, SIZE, generator=generator(seed, "consensus", i)) for i in range(workers)]
    image = photograph()
    gen = generator(seed, "crops")
    rows = torch.randint(0, image.shape[0] - SIZE + 1, (workers,), generator=gen)
    cols = torch.randint(0, image.shape[1] - SIZE + 1, (workers,), generator=gen)
    return [image[r:r + SIZE, c:c + SIZE].clone() for r, c in zip(rows.tolist(), cols.tolist())]


def photograph() -> torch.Tensor:
    """matplotlib's sample photograph in grey, scaled to unit variance."""
    try:
        import matplotlib.cbook
        import matplotlib.image
    except ImportError:
        raise SystemExit('error: --data structured reads a sample photograph shipped with matplotlib: '
                         'pip install -e ".[plot]"') from None
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        pixels = torch.tensor(matplotlib.image.imread(f, format="jpg"), dtype=torch.float32)
    grey = pixels[..., :3].mean(-1)
    return (grey - grey.mean()) / grey.std()


def parse_label(text: str) -> tuple[str, str, dict]:
    """``label`` or ``label@gamma`` -> (label, algorithm, options)."""
    label, _, gamma = text.partition("@")
    if label not in LABELS:
        raise SystemExit(f"error: unknown algorithm label {label!r}; known: {', '.join(LABELS)}")
    name, options = LABELS[label]
    options = dict(options)
    if gamma:
        if "gamma" not in options:
            raise SystemExit(f"error: {label} has no consensus step size to set with @")
        options["gamma"] = float(gamma)
    return text, name, options


def run(label: str, name: str, options: dict, starts: list[torch.Tensor], topology: topologies.Topology,
        placement: Placement, steps: int, seed: int, progress: bool,
        link_drop: float = 0.0) -> list[tuple[int, float, float]]:
    """Gossip from ``starts`` for ``steps`` rounds, each edge down with probability ``link_drop`` in
    every round; returns ``(step, bytes_per_worker, error)`` rows."""
    algorithm_class = ALGORITHMS.entries[name]
    options_class = algorithm_class.Options
    network = Network(len(starts), placement.rank, placement.world_size)
    network.faults = LinkFaults(link_drop, seed) if link_drop else None
    workers = [Worker(i, Matrix(starts[i]), OptimizerConfig(lr=1.0), seed) for i in network.local_workers]
    algorithm = algorithm_class(topology, network, workers, options=options_class(name=name, **options), seed=seed)
    rows = [(0, 0.0, consensus_error(network, workers))]
    for t in tqdm(range(steps), desc=label, disable=not progress, leave=False):
        algorithm.step(t, 0.0, lambda: None)
        sent = network.gather_per_worker([float(network.bytes_sent[w.id]) for w in workers]).mean().item()
        rows.append((t + 1, sent, consensus_error(network, workers)))
    return rows


def consensus_error(network: Network, workers: list[Worker]) -> float:
    """``1/n Σ ‖x_i − x̄‖²_F`` over all workers of the job."""
    mean = network.mean_over_workers([w.params for w in workers])
    return network.gather_per_worker([(w.params - mean).pow(2).sum().item() for w in workers]).mean().item()


def plot(results: dict[str, list[tuple[int, float, float]]], out: Path, data: str) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return 'no plot: matplotlib is not installed (pip install -e ".[plot]")'
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, rows in results.items():
        start = rows[0][2]
        ax.plot([max(b, 1.0) * 8 for _, b, _ in rows], [e / start for *_, e in rows], label=label)
    ax.set(xscale="log", yscale="log", xlabel="bits sent per worker", ylabel="relative consensus error",
           title=f"consensus on {data} 100×100 matrices")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "consensus.png", dpi=100)
    return f"wrote {out / 'consensus.png'}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["random", "structured"], default="random")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--topology", default="ring", help="a topologies builder name (weights: uniform, 1/3 on a ring)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--algorithms", default="dpsgd,powergossip,powergossip-random",
                        help=f"comma-separated labels, optionally label@gamma; known: {', '.join(LABELS)}")
    parser.add_argument("--sweep", action="store_true", help="try step sizes 1e-3..1 and keep the best per label")
    parser.add_argument("--link-drop", default="0", metavar="P[,P...]",
                        help="comma-separated probabilities that an edge is down in a round (default 0)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        topology = topologies.build(args.topology, args.workers, weights="uniform")
    except ValueError as exc:
        parser.error(str(exc))
    placement = join("gloo")
    if args.workers % placement.world_size:
        parser.error(f"--workers {args.workers} cannot be split evenly over {placement.world_size} processes")
    starts = starting_matrices(args.data, args.workers, args.seed)
    progress = placement.rank == 0
    results = {}
    try:
        drops = [float(p) for p in args.link_drop.split(",")]
    except ValueError:
        parser.error(f"--link-drop {args.link_drop}: expected comma-separated probabilities, e.g. 0,0.1,0.3")
    if not all(0 <= p < 1 for p in drops):
        parser.error(f"--link-drop {args.link_drop}: every probability must be >= 0 and < 1")
    for text, drop in [(text, drop) for text in args.algorithms.split(",") for drop in drops]:
        label, name, options = parse_label(text.strip())
        if name not in ALGORITHMS.entries:
            raise SystemExit(f"error: algorithm {name!r} is not available")
        try:
            ALGORITHMS.implementation(name).check_link_drop(drop, name)
        except ValueError as exc:
            raise SystemExit(f"error: --link-drop {drop:g}: {str(exc).partition(': ')[2]}") from None
        label = f"{label} link_drop={drop:g}" if drop else label
        if args.sweep and "gamma" in options:
            trials = {g: run(label, name, {**options, "gamma": g}, starts, topology, placement, args.steps, args.seed,
                             False, drop)
                      for g in tqdm(SWEEP, desc=f"sweep {label}", disable=not progress)}
            best = min(trials, key=lambda g: _final(trials[g]))
            label = f"{label}@{best:.3g}"
            results[label] = trials[best]
        else:
            results[label] = run(label, name, options, starts, topology, placement, args.steps, args.seed, progress,
                                 drop)
        if progress:
            print(f"{label:28s} relative error after {args.steps} steps: "
                  f"{results[label][-1][2] / results[label][0][2]:.3g}", file=sys.stderr)
    if placement.rank == 0:
        write(results, args.out, args.data)
    leave(placement)
    return 0


def _final(rows: list[tuple[int, float, float]]) -> float:
    error = rows[-1][2]
    return error if math.isfinite(error) else math.inf


def write(results: dict[str, list[tuple[int, float, float]]], out: Path, data: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "consensus.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["algorithm", "step", "bytes_per_worker", "error", "relative_error"])
        for label, rows in results.items():
            start = rows[0][2]
            for step, sent, error in rows:
                writer.writerow([label, step, sent, error, error / start])
    print(f"wrote {out / 'consensus.csv'}; {plot(results, out, data)}")


if __name__ == "__main__":
    sys.exit(main())
