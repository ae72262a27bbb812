"""The worked example of docs/networks.md: time per epoch of the paper's 16-ring LSTM on a
described network, for every algorithm row, from the bytes that ``--dry-run`` counts.

    python scripts/network_table.py [--config configs/ring16_lstm.yaml] [--compute 0.35]

Prints a markdown table: bytes per step of worker 0, and the simulated time per epoch at 1 and
10 Gbit/s (20 us latency) with no computation (communication alone) and with ``--compute``
seconds of computation per step (the rows' own update order: D-PSGD and Choco overlap).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gossip import config as config_module
from gossip.algorithms import ALGORITHMS
from gossip.comm.simclock import NetworkConfig
from gossip.tasks import TASKS
from gossip.train.cli import simulated_step_s

ROWS = [("D-PSGD", ["algorithm={name: dpsgd}"]),
        *((f"PowerGossip, {k} iterations", [f"algorithm={{name: powergossip, iterations: {k}}}"]) for k in (8, 16, 32)),
        ("Choco (sign)", ["algorithm={name: choco, codec: sign}"]),
        ("all-reduce", ["algorithm={name: allreduce}"])]
BANDWIDTHS = ("1Gbit/s", "10Gbit/s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/ring16_lstm.yaml"))
    parser.add_argument("--compute", type=float, default=0.35, help="seconds of computation per step")
    args = parser.parse_args(argv)
    computes = (0.0, args.compute)
    header = ["row", "MiB per step"] + [f"{b}, compute {c:g} s" for c in computes for b in BANDWIDTHS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, overrides in ROWS:
        config = config_module.load(args.config, overrides)
        task = TASKS.implementation(config.task.name).plan(config.task, config.workers, config.seed,
                                                          config.train.batch_size)
        topology = config.topology.build(config.workers, config.seed)(0)
        shapes = [p.shape for p in task.model.parameters()]
        per_step = ALGORITHMS.implementation(config.algorithm.name).bytes_per_step(config.algorithm, shapes, topology, 0)
        cells = [label, f"{per_step / 2**20:.3f}"]
        for compute in computes:
            for bandwidth in BANDWIDTHS:
                config.network = NetworkConfig(bandwidth=bandwidth, latency="20us", compute=compute)
                step = simulated_step_s(config, topology, shapes, task.steps_per_epoch)
                cells.append(f"{step * task.steps_per_epoch:.3g} s")
        lines.append("| " + " | ".join(cells) + " |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
