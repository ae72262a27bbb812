"""A plain torch training loop, one gossip worker per process:

    torchrun --standalone --nproc_per_node 4 examples/torchrun_gossip.py --algorithm powergossip --option iterations=2

It is a data-parallel script with ``gossip.DecentralizedOptimizer`` in place of ``DDP(model)``
(docs/distributed.md shows the diff). The model, each worker's data and the loss come from gossip's
synthetic logistic task with the values of ``configs/logistic.yaml``, so that this script's losses
can be checked against ``python -m gossip.train --config configs/logistic.yaml --set workers=4``
(tests/test_decentralized.py does). Every ``--log-every`` steps process 0 prints the mean training
loss over workers and steps since the last line, the consensus distance and the bytes sent per
worker; ``--metrics FILE`` also writes them as JSON lines.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.distributed as dist
import yaml

import gossip
from gossip.comm.seeding import seed_for
from gossip.tasks.synthetic import SyntheticOptions


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithm", default="dpsgd", help="dpsgd | powergossip | choco | ...")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="an option of the algorithm, e.g. iterations=2 (value read as YAML; repeatable)")
    parser.add_argument("--topology", default="ring")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--metrics", help="process 0 writes the logged records to this file (JSON lines)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    options = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"error: --option {item!r}: expected KEY=VALUE, e.g. --option iterations=2")
        options[key] = yaml.safe_load(value)
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()

    # The task of configs/logistic.yaml stands in for a script's own model, data loader and loss.
    task = gossip.TASKS.implementation("logistic")(
        SyntheticOptions(dim=32, hidden=16, samples_per_worker=4096, heterogeneity=0.3),
        world_size, args.seed, args.batch_size)
    torch.manual_seed(seed_for(args.seed, "init"))
    model = task.build_model()  # the same initial model in every process
    torch.manual_seed(seed_for(args.seed, "worker", rank))  # each worker's own randomness (dropout etc.)
    data = task.stream(rank)  # this worker's shard, like a DistributedSampler's
    memory: dict = {}

    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    optimizer = gossip.DecentralizedOptimizer(optimizer, model, algorithm=args.algorithm,
                                              topology=args.topology, seed=args.seed, **options)

    loss_sum, count = torch.zeros((), dtype=torch.float64), 0
    log = open(args.metrics, "w") if args.metrics and rank == 0 else None
    for step in range(1, args.steps + 1):
        optimizer.zero_grad()
        loss = task.loss(model, data.next(), memory)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach()
        count += 1
        if step % args.log_every == 0 or step == args.steps:
            # Measurement only (collectives, not gossip): the mean over workers.
            totals = torch.stack([loss_sum / count, torch.tensor(float(optimizer.bytes_sent), dtype=torch.float64)])
            dist.all_reduce(totals)
            record = {"step": step, "train_loss": totals[0].item() / world_size,
                      "consensus_distance": optimizer.consensus_distance(),
                      "bytes_per_worker": totals[1].item() / world_size}
            loss_sum.zero_()
            count = 0
            if rank == 0:
                print("  ".join(f"{key} {value:.6g}" for key, value in record.items()), flush=True)
                if log is not None:
                    log.write(json.dumps(record) + "\n")
    if log is not None:
        log.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
