"""PowerGossip's rounds with the fused C sweep (``gossip/native/sweep.c``) against the torch sweep.

    python scripts/bench_sweep.py [--model lstm] [--quick] [--workers 4] [--rounds 8] [--repeats 12] [--json OUT]

One process holds ``--workers`` copies of a model of ``scripts/bench_gossip.py`` (``--quick``
narrows the LSTM as there), each moved by a different random offset, on a ring under PowerGossip
with ``--rounds`` rounds per step, twice: one algorithm uses the C kernels (the round's sweeps and
the normalisation of its vectors), the other, on its own copies of the same workers, the torch ops
(the sweep in 1 MiB row chunks of BLAS products). One repetition times one step's rounds of each
(no forward/backward, no optimizer), each after one untimed step; the table shows the medians over
the repetitions and their ratio ``torch / kernel`` (above 1: the kernels are faster). Interleaving
the two keeps a drifting machine from favouring either.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from bench_gossip import (SEED, WORKLOADS, Settings, cpu_description,  # scripts/ is on sys.path
                          format_table, initial_model, parse_list)

import topologies
from gossip import native
from gossip.algorithms import PowerGossip
from gossip.algorithms.powergossip import PowerGossipOptions
from gossip.network import Network
from gossip.worker import Worker


def step_rounds(algorithm: PowerGossip) -> float:
    """Seconds for one step's gossip rounds."""
    start = time.perf_counter()
    algorithm.gossip_rounds()
    return time.perf_counter() - start


def measure(model: str, quick: bool, workers: int, rounds: int, repeats: int, mlp: tuple[int, ...]) -> dict:
    """Median seconds per step's rounds with the kernel and with the torch sweep."""
    settings = Settings(quick=quick, workers=workers, warmup=1, steps=1, repeats=repeats, device="cpu",
                        threads=None, mlp_sizes=mlp, mlp_batch=1)
    workload = WORKLOADS[model](settings)
    network = Network(workers, 0, 1, torch.device("cpu"))
    start = initial_model(workload)
    usable = native.usable
    switches = {"kernel": usable, "torch": lambda *tensors: False}
    algorithms, times = {}, {label: [] for label in switches}
    try:
        for label, switch in switches.items():  # the same start for both: each its own copies of the workers
            native.usable = switch  # a Neighbourhood picks the C round for its matrices when it is made
            gen = torch.Generator().manual_seed(0)
            members = []
            for i in network.local_workers:
                worker = Worker(i, copy.deepcopy(start), workload.optimizer, SEED)
                worker.params.add_(torch.randn(worker.params.shape, generator=gen), alpha=0.01)
                members.append(worker)
            algorithms[label] = PowerGossip(topologies.ring(workers), network, members,
                                            options=PowerGossipOptions(iterations=rounds), seed=SEED)
        for _ in range(repeats):
            for label, switch in switches.items():
                native.usable = switch
                step_rounds(algorithms[label])
                times[label].append(step_rounds(algorithms[label]))
    finally:
        native.usable = usable
    kernel, torch_sweep = (statistics.median(times[label]) for label in ("kernel", "torch"))
    return {"model": model, "workers": workers, "rounds": rounds, "kernel_s": kernel, "torch_s": torch_sweep,
            "ratio": torch_sweep / kernel, "kernel_available": native.available(),
            "parameters": members[0].params.numel()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(WORKLOADS), default="lstm", help="a model of bench_gossip.py")
    parser.add_argument("--quick", action="store_true", help="the narrower LSTM of bench_gossip.py --quick")
    parser.add_argument("--workers", type=int, default=4, help="workers n on the ring, all in this process")
    parser.add_argument("--rounds", type=int, default=8, help="rounds per step (PowerGossip's s)")
    parser.add_argument("--repeats", type=int, default=12, help="repetitions R; medians are reported")
    parser.add_argument("--mlp", default="784,1024,1024,10", help="MLP layer widths, input first (--model mlp)")
    parser.add_argument("--json", type=Path, default=None, help="write the row as JSON here")
    args = parser.parse_args()
    if args.workers < 2 or args.rounds < 1 or args.repeats < 1:
        sys.exit("bench_sweep.py: --workers must be at least 2, --rounds and --repeats at least 1")
    if not native.available():
        print("the C kernels are not available (no compiler, or GOSSIP_NATIVE=0): both columns time the torch sweep")
    row = measure(args.model, args.quick, args.workers, args.rounds, args.repeats,
                  tuple(int(w) for w in parse_list(args.mlp)))
    print(format_table(["model", "n", "rounds", "kernel ms", "torch ms", "torch/kernel"],
                       [[row["model"], str(row["workers"]), str(row["rounds"]), f"{1e3 * row['kernel_s']:.2f}",
                         f"{1e3 * row['torch_s']:.2f}", f"{row['ratio']:.2f}"]]))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {row['parameters']:,} parameters per worker; "
          f"{cpu_description()}")
    if args.json:
        args.json.write_text(json.dumps([row], indent=1))


if __name__ == "__main__":
    main()
