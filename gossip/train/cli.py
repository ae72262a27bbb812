"""Command line: ``python -m gossip.train --config FILE [--set key=value ...] [--run-dir DIR] [--dry-run]``
or ``python -m gossip.train --resume RUN_DIR [--set train.steps=N]``.

The same flags work under ``torchrun``: every process reads the same config, hosts its block of
workers, and process 0 writes the run directory's ``config.yaml`` and ``metrics.jsonl``. With
``run.resume: auto`` a command whose run directory holds the same run continues it from its newest
complete checkpoint (so torchrun's restarts continue). SIGTERM or SIGINT stops the run after the
current step with a checkpoint (SIGTERM then exits with :data:`STOPPED_BY_SIGTERM`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import torch.distributed as dist

from gossip.train import checkpoint
from gossip import config as config_module
from gossip.config import Config, ConfigError
from gossip.comm.distributed import Placement, join, leave, loss_linger_s
from gossip.comm.messages import Network, NetworkError, PeerLostError
from gossip.comm.simclock import SimClock, planned_step
from gossip.algorithms import ALGORITHMS
from gossip.tasks import TASKS, DataError
from gossip.train.trainer import NonFiniteError, Trainer

T = TypeVar("T")

# Keys that may change when a run is resumed; everything else is the run's own.
RESUMABLE = ("train.steps", "train.epochs", "train.eval_every", "train.checkpoint_every", "train.checkpoint_every_s",
             "run.timeout_s", "run.resume", "run.keep_checkpoints", "backend")

#: The exit status after a SIGTERM stopped the run with a checkpoint (128 + SIGTERM, as a shell
#: reports a process ended by it): non-zero, so that torchrun's ``--max-restarts`` restarts the job.
STOPPED_BY_SIGTERM = 128 + signal.SIGTERM


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m gossip.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="YAML experiment file")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR",
                        help="continue RUN_DIR from its latest complete checkpoint, with its saved config")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set optimizer.lr=0.2 (repeatable)")
    parser.add_argument("--run-dir", type=Path, help="run directory (overrides run.dir)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and stop (writes nothing)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if (args.config is None) == (args.resume is None):
        parser.error("give exactly one of --config FILE and --resume RUN_DIR")
    if args.resume is not None and args.run_dir is not None:
        parser.error("--resume continues RUN_DIR itself; --run-dir does not apply")
    return args


def resume_config(run_dir: Path, overrides: list[str]) -> Config:
    """The saved config of ``run_dir`` with the few keys that may change on resume."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise ConfigError(f"--resume {run_dir}: not a run directory (no config.yaml)")
    changes = []
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key not in RESUMABLE:
            raise ConfigError(f"--set {key}: cannot change when resuming; allowed: {', '.join(RESUMABLE)}")
        changes.append(item)
        if key in ("train.steps", "train.epochs"):
            other = "train.epochs" if key == "train.steps" else "train.steps"
            changes.append(f"{other}=null")
    return config_module.load(saved, changes + [f"run.dir={run_dir}"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.resume is not None:
            config = resume_config(args.resume, args.overrides)
        else:
            overrides = list(args.overrides) + ([f"run.dir={args.run_dir}"] if args.run_dir else [])
            config = config_module.load(args.config, overrides)
        placement = join(config.backend, config.run.timeout_s)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    code = 2
    try:
        code = run(args, config, placement)
        return code
    except (ConfigError, NetworkError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        leave(placement, linger_s=loss_linger_s() if code == 3 else 0.0)  # 3: a lost peer or a non-finite value


def run(args: argparse.Namespace, config: Config, placement: Placement) -> int:
    """Everything after joining the job: checks, dry run or training."""
    check_same_config(config, placement)
    network = Network(config.workers, placement.rank, placement.world_size, placement.device,
                      timeout_s=config.run.timeout_s, heartbeat=placement.heartbeat)
    if args.dry_run:
        if placement.rank == 0:
            print(plan(config, placement))
        return 0
    trainer = Trainer(config, network, progress=not args.no_progress)  # reads the data: fails before any file
    decided = decided_by_process_0(lambda: decide_start(config, args.resume, explicit=args.run_dir is not None),
                                   placement)
    if decided is None:
        return 2
    run_dir, resume_from = decided
    trainer.run_dir = run_dir
    if resume_from is not None:
        trainer.restore(run_dir / checkpoint.DIRECTORY / resume_from)
    if placement.rank == 0:
        keep_metrics_until(trainer)
        if resume_from is not None:
            print(f"resuming {run_dir} from step {trainer.step} (checkpoint {run_dir / checkpoint.DIRECTORY / resume_from})",
                  file=sys.stderr)
        (run_dir / "config.yaml").write_text(config_module.dump(config))
        trainer.task.save(run_dir)
    start = time.perf_counter()
    try:
        with stop_on_signals(trainer):
            record = trainer.run()
    except (PeerLostError, dist.DistError) as exc:
        lost = exc if isinstance(exc, PeerLostError) else PeerLostError(network.describe_lost(None, exc))
        print(f"error: process {placement.rank}: {lost}; {last_checkpoint(run_dir)}", file=sys.stderr)
        return 3
    except NonFiniteError as exc:
        print(f"error: process {placement.rank}: {exc}; {last_checkpoint(run_dir)}", file=sys.stderr)
        return 3
    if placement.rank == 0:
        if trainer.step < trainer.total_steps:
            print(f"stopped at step {trainer.step} with a checkpoint ({signal.Signals(trainer.stop_signal).name}); "
                  f"the same command, or --resume {run_dir}, continues it")
        else:
            print(summary(record, trainer, time.perf_counter() - start, run_dir))
    return STOPPED_BY_SIGTERM if trainer.stop_signal == signal.SIGTERM else 0


def check_same_config(config: Config, placement: Placement) -> None:
    """Every process must run the same config: compare with process 0's before any step."""
    if placement.world_size == 1:
        return
    mine = config_module.flatten(config_module.to_dict(config))
    gathered: list[Any] = [None] * placement.world_size
    dist.all_gather_object(gathered, mine)
    for rank, theirs in enumerate(gathered):
        differing = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if differing:
            raise ConfigError(f"process {rank}'s config differs from process {placement.rank}'s at: "
                              f"{', '.join(differing)}; every process must run the same config")


def decide_start(config: Config, resume: Path | None, explicit: bool) -> tuple[Path, str | None]:
    """Process 0's choice of the run directory and of the checkpoint to continue from (None: from
    step 0). ``--resume DIR`` continues DIR. Otherwise, with ``run.resume: auto``, a directory that
    holds this run (:func:`check_same_run`) continues from its newest complete checkpoint, or starts
    over when it has none; any other directory, or ``run.resume: never``, gets a fresh run
    (:func:`fresh_run_dir`). Checkpoints after the one continued from are deleted."""
    requested = resume if resume is not None else Path(config.run.dir)
    if resume is None and (config.run.resume == "never" or not (requested / "config.yaml").is_file()):
        return fresh_run_dir(requested, explicit), None
    if resume is None:
        check_same_run(requested, config)
    found = checkpoint.find_latest(requested)
    if found is None and resume is not None:
        raise ConfigError(f"{requested} has no complete checkpoint to resume from")
    checkpoint.remove_after(requested, -1 if found is None else checkpoint.manifest_step(found))
    if found is None:
        print(f"run directory: {requested} (this config, no complete checkpoint: starting over)", file=sys.stderr)
        return requested, None
    return requested, found.name


def check_same_run(run_dir: Path, config: Config) -> None:
    """Raise a one-line :class:`ConfigError` naming the first key (but ``run.dir`` and the
    :data:`RESUMABLE` ones) whose value in ``run_dir/config.yaml`` differs from ``config``'s."""
    fix = "set run.resume: never or use another run.dir"
    try:
        saved_config = config_module.load(run_dir / "config.yaml")
    except ConfigError as exc:
        raise ConfigError(f"{run_dir} holds a run whose config cannot be read ({exc}); {fix}") from None
    saved, wanted = (config_module.flatten(config_module.to_dict(c)) for c in (saved_config, config))
    for key in config_module.changed_keys(saved, wanted):
        if key not in RESUMABLE:
            raise ConfigError(f"{run_dir} holds a run with {key}={_shown(saved, key)}; "
                              f"this config has {_shown(wanted, key)} ({fix})")


def _shown(flat: dict[str, Any], key: str) -> str:
    return config_module.format_value(flat[key]) if key in flat else "(no such key)"


def keep_metrics_until(trainer: Trainer) -> None:
    """Exactly once: keep the records of ``metrics.jsonl`` up to the step that the run continues
    from (none when it starts over), but a closing record off the ``eval_every`` grid that the run
    will log again; rewritten through a temporary file."""
    metrics = trainer.run_dir / "metrics.jsonl"
    if not metrics.exists():
        return
    every = trainer.config.train.eval_every
    kept = [line for line in metrics.read_text().splitlines()
            if (step := json.loads(line)["step"]) <= trainer.step and (step % every == 0 or step == trainer.total_steps)]
    checkpoint.atomic_write(metrics, lambda f: f.write("".join(line + "\n" for line in kept).encode()))


def decided_by_process_0(decide: Callable[[], T], placement: Placement) -> T | None:
    """Process 0's ``decide()``, told to every process; None everywhere (and the error printed by
    process 0) when it raised a :class:`ConfigError`."""
    outcome: list[Any] = [None]
    if placement.rank == 0:
        try:
            outcome = [decide()]
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
    if placement.world_size > 1:
        dist.broadcast_object_list(outcome, src=0)
    return outcome[0]


@contextlib.contextmanager
def stop_on_signals(trainer: Trainer) -> Iterator[None]:
    """While training, SIGTERM/SIGINT finish the current step, save a checkpoint and stop; after
    the first, a SIGTERM ends the process at once and a SIGINT raises KeyboardInterrupt. The previous
    handlers come back afterwards."""
    def request_stop(signum: int, frame: object) -> None:
        trainer.stop_signal = signum
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def last_checkpoint(run_dir: Path) -> str:
    found = checkpoint.complete_checkpoints(run_dir / checkpoint.DIRECTORY)
    if not found:
        return "no checkpoint was saved yet"
    return f"the last complete checkpoint is step {checkpoint.manifest_step(found[0])}: resume with --resume {run_dir}"


def fresh_run_dir(requested: Path, explicit: bool) -> Path:
    """A directory for a new run: ``requested``, or when it already holds a run, ``DIR-2``,
    ``DIR-3`` ... (refused when ``requested`` was given explicitly)."""
    run_dir = requested
    if (run_dir / "metrics.jsonl").exists():
        if explicit:
            raise ConfigError(f"{run_dir} already holds a run; choose another --run-dir")
        suffix = 2
        while (requested.parent / f"{requested.name}-{suffix}" / "metrics.jsonl").exists():
            suffix += 1
        run_dir = requested.parent / f"{requested.name}-{suffix}"
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"run directory: {run_dir}", file=sys.stderr)
    return run_dir


def exact_bytes(count: float) -> str:
    """A byte count with thousands separators, exact (a per-step mean can end in .5)."""
    return f"{count:,.1f}".removesuffix(".0")


def weights_label(config: Config, topology: Any) -> str:
    """The weights as configured, or the default that the graph used."""
    if config.topology.weights is not None:
        return config.topology.weights
    return "1/(out-degree + 1)" if topology.directed else "metropolis_hastings"


def plan(config: Config, placement: Placement) -> str:
    """A human summary of what the run would do (reads no data set)."""
    topology = config.topology.build(config.workers, config.seed)(0)
    degrees = sorted({topology.degree(i) for i in range(topology.n)})
    per_process = config.workers // placement.world_size
    task = TASKS.implementation(config.task.name).plan(config.task, config.workers, config.seed,
                                                      config.train.batch_size)
    shapes = [p.shape for p in task.model.parameters()]
    parameters = sum(math.prod(shape) for shape in shapes)
    per_step = ALGORITHMS.implementation(config.algorithm.name).bytes_per_step(config.algorithm, shapes, topology, 0)
    length = f"{config.train.steps} steps" if config.train.steps else f"{config.train.epochs} epochs"
    simulated = [] if config.network is None else [
        f"sim time     {simulated_time(config, topology, shapes, task.steps_per_epoch)}"]
    return "\n".join([
        f"workers      {config.workers} on {placement.world_size} process(es), {per_process} per process, "
        f"device {placement.device}, backend {placement.backend or 'none (one process)'}",
        f"topology     {config.topology.name} ({weights_label(config, topology)}): degree {'/'.join(map(str, degrees))}, "
        f"spectral gap {topology.spectral_gap:.4g}",
        f"algorithm    {config_module.to_dict(config.algorithm)}",
        f"order        {ALGORITHMS.implementation(config.algorithm.name).order_summary(config.algorithm)}",
        f"task         {config_module.to_dict(config.task)}",
        f"model        {type(task.model).__name__}, {parameters:,} parameters in {len(shapes)} tensors"
        + (f" ({task.note})" if task.note else ""),
        f"bytes        worker 0 sends {exact_bytes(per_step)} B = {per_step / 2**20:.3f} MiB per step, "
        f"{per_step * task.steps_per_epoch / 2**20:.1f} MiB per epoch ({task.steps_per_epoch} steps)",
        f"optimizer    {config_module.to_dict(config.optimizer)}",
        f"lr_schedule  {config_module.to_dict(config.lr_schedule)}",
        f"train        {length}, batch {config.train.batch_size} per worker, eval every {config.train.eval_every}",
        f"run dir      {config.run.dir}",
        *simulated,
    ])


#: The dry run's simulated clock replays this many steps (at most an epoch) and scales to an epoch.
PLANNED_STEPS = 100


def simulated_step_s(config: Config, topology: Any, shapes: list, steps_per_epoch: int) -> float:
    """The simulated seconds per step on ``config.network``, from the bytes that every worker sends
    per step (:func:`gossip.comm.simclock.planned_step`; no link faults): the mean over the first
    ``PLANNED_STEPS`` steps (at most an epoch)."""
    algorithm = ALGORITHMS.implementation(config.algorithm.name)
    per_step = [algorithm.bytes_per_step(config.algorithm, shapes, topology, i) for i in range(topology.n)]
    events = planned_step(algorithm.step_events(config.algorithm), per_step,
                          [topology.out_neighbors(i) for i in range(topology.n)])
    clock = SimClock(config.network, config.workers)
    steps = min(PLANNED_STEPS, steps_per_epoch)
    clock.run([events] * steps)
    return clock.time / steps


def simulated_time(config: Config, topology: Any, shapes: list, steps_per_epoch: int) -> str:
    """The dry run's line: simulated time per step and per epoch, and the network it assumes."""
    step = simulated_step_s(config, topology, shapes, steps_per_epoch)
    network = config.network
    compute = "compute measured during the run, not included" if network.compute == "measured" \
        else f"compute {network.compute:g} s at speed 1"
    groups = network.groups
    return (f"{step:.6g} s per step, {step * steps_per_epoch:.6g} s per epoch ({compute}; "
            f"{network.bandwidth}, {network.latency} per message"
            + (f"; groups of {groups.size}: {groups.bandwidth}, {groups.latency}" if groups else "") + ")")


def summary(record: dict, trainer: Trainer, seconds: float, run_dir: Path) -> str:
    if not record:
        return f"done: {trainer.step} steps in {seconds:.1f} s (nothing left to train); run dir {run_dir}"
    metric = f"eval_{trainer.task.metric}"
    parts = [f"done: {trainer.step} steps in {seconds:.1f} s", f"train_loss {record['train_loss']:.4f}",
             f"eval_loss {record['eval_loss']:.4f}"]
    if metric in record:
        parts.append(f"{metric} {record[metric]:.4f}")
    parts += [f"consensus_distance {record['consensus_distance']:.3g}",
              f"sent {record['bytes_per_worker'] / 2**20:.2f} MiB/worker", f"run dir {run_dir}"]
    return "; ".join(parts)
