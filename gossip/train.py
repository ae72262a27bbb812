"""Command line: ``python -m gossip.train --config FILE [--set key=value ...] [--run-dir DIR] [--dry-run]``.

The same flags work under ``torchrun``: every process reads the same config, hosts its block of
workers, and process 0 writes the run directory's ``config.yaml`` and ``metrics.jsonl``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch.distributed as dist

from gossip import config as config_module
from gossip.config import Config, ConfigError
from gossip.distributed import Placement, join, leave
from gossip.network import Network, NetworkError
from gossip.trainer import Trainer


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m gossip.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="YAML experiment file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set optimizer.lr=0.2 (repeatable)")
    parser.add_argument("--run-dir", type=Path, help="run directory (overrides run.dir)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and stop (writes nothing)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.config is None:
        parser.error("--config FILE is required")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        overrides = list(args.overrides) + ([f"run.dir={args.run_dir}"] if args.run_dir else [])
        config = config_module.load(args.config, overrides)
        placement = join(config.backend)
        network = Network(config.workers, placement.rank, placement.world_size, placement.device)
    except (ConfigError, NetworkError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.dry_run:
            if placement.rank == 0:
                print(plan(config, placement))
            return 0
        run_dir = choose_run_dir(Path(config.run.dir), explicit=args.run_dir is not None, placement=placement)
        if run_dir is None:
            return 2
        trainer = Trainer(config, network, run_dir, progress=not args.no_progress)
        if placement.rank == 0:
            (run_dir / "config.yaml").write_text(config_module.dump(config))
        start = time.perf_counter()
        record = trainer.run()
        if placement.rank == 0:
            print(summary(record, trainer, time.perf_counter() - start, run_dir))
        return 0
    finally:
        leave()


def choose_run_dir(requested: Path, explicit: bool, placement: Placement) -> Path | None:
    """Process 0 picks the directory (a fresh one: ``DIR-2``, ``DIR-3`` ... when ``DIR`` already
    holds a run and was not asked for explicitly) and tells the others."""
    choice: list[str | None] = [None]
    if placement.rank == 0:
        run_dir = requested
        if (run_dir / "metrics.jsonl").exists():
            if explicit:
                print(f"error: {run_dir} already holds a run; choose another --run-dir", file=sys.stderr)
                run_dir = None
            else:
                suffix = 2
                while (requested.parent / f"{requested.name}-{suffix}" / "metrics.jsonl").exists():
                    suffix += 1
                run_dir = requested.parent / f"{requested.name}-{suffix}"
        if run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)
            print(f"run directory: {run_dir}", file=sys.stderr)
        choice = [None if run_dir is None else str(run_dir)]
    if placement.world_size > 1:
        dist.broadcast_object_list(choice, src=0)
    return None if choice[0] is None else Path(choice[0])


def plan(config: Config, placement: Placement) -> str:
    """A human summary of what the run would do."""
    topology = config.topology.build(config.workers, config.seed)(0)
    degrees = sorted({topology.degree(i) for i in range(topology.n)})
    per_process = config.workers // placement.world_size
    algorithm = {k: v for k, v in config_module.to_dict(config.algorithm).items()}
    length = f"{config.train.steps} steps" if config.train.steps else f"{config.train.epochs} epochs"
    return "\n".join([
        f"workers      {config.workers} on {placement.world_size} process(es), {per_process} per process, "
        f"device {placement.device}, backend {placement.backend or 'none (one process)'}",
        f"topology     {config.topology.name} ({config.topology.weights}): degree {'/'.join(map(str, degrees))}, "
        f"spectral gap {topology.spectral_gap:.4g}",
        f"algorithm    {algorithm}",
        f"task         {config_module.to_dict(config.task)}",
        f"optimizer    {config_module.to_dict(config.optimizer)}",
        f"schedule     {config_module.to_dict(config.schedule)}",
        f"train        {length}, batch {config.train.batch_size} per worker, eval every {config.train.eval_every}",
        f"run dir      {config.run.dir}",
    ])


def summary(record: dict, trainer: Trainer, seconds: float, run_dir: Path) -> str:
    metric = f"eval_{trainer.task.metric}"
    parts = [f"done: {trainer.step} steps in {seconds:.1f} s", f"train_loss {record['train_loss']:.4f}",
             f"eval_loss {record['eval_loss']:.4f}"]
    if metric in record:
        parts.append(f"{metric} {record[metric]:.4f}")
    parts += [f"consensus_distance {record['consensus_distance']:.3g}",
              f"sent {record['bytes_per_worker'] / 2**20:.2f} MiB/worker", f"run dir {run_dir}"]
    return "; ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
