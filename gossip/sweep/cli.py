"""Run a grid of configurations over seeds and turn the runs into tables.

    python -m gossip.sweep --config C --grid KEY=V1,V2,... [--grid ...] --seeds 0,1,2 --jobs J --out DIR [--set KEY=VALUE ...]
    python -m gossip.sweep --sweep configs/sweeps/NAME.yaml [--jobs J] [--out DIR]

Every run is its own ``python -m gossip.train`` process in ``DIR/runs/NAME`` (NAME: the row label,
the swept values, the seed), J at a time, each with ``cores // J`` threads; its output goes to
``NAME/train.log``. A run whose metrics reach its final step with the sweep's config is skipped;
one with a checkpoint is continued with ``--resume`` (also when only its length grew); any other
is started over. Failed runs never stop the others. Then ``DIR/results.csv`` and
``DIR/summary.md`` are written (see :mod:`gossip.sweep.sweeptables`); the exit status is 1 when a run is
not done.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from gossip.train import checkpoint

from gossip.sweep import sweepfile, sweeptables
from gossip import config as config_module
from gossip.config import ConfigError
from gossip.sweep.sweepfile import Run, Row, Sweep, SweepError, format_value
from gossip.sweep.sweeptables import RunResult
from gossip.train.cli import RESUMABLE

LOG = "train.log"
WALL = "sweep.json"  # the run's accumulated wall time under the sweep


@dataclass
class Plan:
    """What a run needs: ``skip`` (done), ``resume`` (from its checkpoint) or ``fresh``."""

    run: Run
    run_dir: Path
    action: str
    argv: list[str]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m gossip.sweep", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path, help="the base config of every run")
    source.add_argument("--sweep", type=Path, metavar="FILE", help="a sweep file (configs/sweeps/NAME.yaml)")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                        help="sweep KEY over these values in every row (repeatable)")
    parser.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2 (default: the sweep file's, or 0)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key in every run (repeatable)")
    parser.add_argument("--jobs", type=int, default=1, metavar="J", help="runs at a time (default 1)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="sweep directory (default with --sweep: runs/sweeps/NAME)")
    parser.add_argument("--tune", metavar="KEY", help="in summary.md, the best value of this swept key per row")
    parser.add_argument("--by", default="eval_loss", metavar="METRIC",
                        help="what --tune ranks by: a metric (its final value) or a results.csv column "
                             "such as best_eval_loss (default eval_loss)")
    parser.add_argument("--print-commands", action="store_true",
                        help="print one shell command per unfinished run instead of running them")
    parser.add_argument("--collect", action="store_true", help="run nothing; write the tables from the runs there")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs: expected a positive number of runs at a time")
    if args.out is None:
        if args.config is not None:
            parser.error("--out DIR is required with --config")
        args.out = Path("runs/sweeps") / args.sweep.stem
    return args


def build_sweep(args: argparse.Namespace) -> Sweep:
    """The sweep file (or a one-row sweep of ``--config``) with the command line's grid, sets and seeds."""
    if args.sweep is not None:
        sweep = sweepfile.load(args.sweep)
    else:
        if not args.config.is_file():
            raise SweepError(f"--config {str(args.config)!r} does not exist")
        sweep = Sweep(args.config, [Row(args.config.stem)])
    sweep.grid.update(sweepfile.parse_grid_option(g) for g in args.grid)
    sweep.common.update(sweepfile.parse_set_option(s) for s in args.overrides)
    if args.seeds is not None:
        sweep.seeds = sweepfile.parse_seeds(args.seeds)
    sweepfile.check(sweep)
    if args.tune is not None and args.tune not in sweep.swept_keys():
        raise SweepError(f"--tune {args.tune}: not a swept key; swept: {', '.join(sweep.swept_keys()) or 'none'}")
    try:
        sweeptables.metric_column(args.by)
    except ValueError as exc:
        raise SweepError(str(exc)) from None
    return sweep


def plan(run: Run, base: Path, out: Path) -> Plan:
    """Decide from what ``out/runs/NAME`` holds whether the run is done, resumable or to start over."""
    run_dir = out / "runs" / run.name
    fresh = Plan(run, run_dir, "fresh", [sys.executable, "-m", "gossip.train", "--config", str(base),
                                         "--run-dir", str(run_dir), "--no-progress",
                                         *(a for o in run.overrides for a in ("--set", o))])
    try:
        wanted_config = config_module.load(base, [*run.overrides, f"run.dir={run_dir}"])
        saved_config = config_module.load(run_dir / "config.yaml", [f"run.dir={run_dir}"])
    except ConfigError:  # an invalid run (it fails with the reason) or nothing usable saved
        return fresh
    wanted, saved = (config_module.flatten(config_module.to_dict(c)) for c in (wanted_config, saved_config))
    changed = set(config_module.changed_keys(saved, wanted))
    if changed - set(RESUMABLE) or not _length_reachable(saved, wanted):
        return fresh
    if "train.steps" not in changed and "train.epochs" not in changed and _complete(sweeptables.read_records(run_dir), wanted):
        return Plan(run, run_dir, "skip", [])
    if checkpoint.find_latest(run_dir) is None:
        return fresh
    sets = [f"{k}={format_value(wanted[k])}" for k in RESUMABLE if k in changed and wanted[k] is not None]
    return Plan(run, run_dir, "resume", [sys.executable, "-m", "gossip.train", "--resume", str(run_dir),
                                         "--no-progress", *(a for s in sets for a in ("--set", s))])


def shell_command(p: Plan) -> str:
    """The plan as one shell line, output into the run's log (a fresh run first clears its directory)."""
    directory, log = shlex.quote(str(p.run_dir)), shlex.quote(str(p.run_dir / LOG))
    prefix = f"rm -rf {directory} && mkdir -p {directory} && " if p.action == "fresh" else ""
    return f"{prefix}{shlex.join(p.argv)} >> {log} 2>&1"


def execute(plans: list[Plan], jobs: int, progress: bool) -> tuple[dict[Path, int], bool]:
    """Run the unfinished plans, ``jobs`` at a time; their exit codes, and whether it was interrupted.

    Ctrl-C or SIGTERM asks every running run to stop with a checkpoint (it resumes next time)."""
    todo = [p for p in plans if p.action != "skip"]
    threads = max(1, _cores() // jobs)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    codes: dict[Path, int] = {}
    running: set[subprocess.Popen] = set()
    lock, stopping = threading.Lock(), threading.Event()

    def launch(p: Plan) -> int | None:
        if p.action == "fresh":
            shutil.rmtree(p.run_dir, ignore_errors=True)
        p.run_dir.mkdir(parents=True, exist_ok=True)
        wall = _wall(p.run_dir) if p.action == "resume" else 0.0
        start = time.perf_counter()
        with (p.run_dir / LOG).open("a") as log:
            with lock:
                if stopping.is_set():
                    return None
                proc = subprocess.Popen(p.argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                        stdin=subprocess.DEVNULL)
                running.add(proc)
            code = proc.wait()
        with lock:
            running.discard(proc)
        checkpoint.atomic_write(p.run_dir / WALL, json.dumps({"wall_s": wall + time.perf_counter() - start}))
        return code

    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    bar = tqdm(total=len(plans), initial=len(plans) - len(todo), desc="sweep", unit="run", disable=not progress,
               dynamic_ncols=True)
    pool = ThreadPoolExecutor(max_workers=jobs)
    futures = {pool.submit(launch, p): p for p in todo}
    interrupted = False
    try:
        for future in as_completed(futures):
            if (code := future.result()) is not None:
                codes[futures[future].run_dir] = code
            bar.update(1)
            bar.set_postfix(failed=sum(c != 0 for c in codes.values()))
    except KeyboardInterrupt:
        interrupted = True
        with lock:
            stopping.set()
            for proc in running:
                proc.send_signal(signal.SIGTERM)
        pool.shutdown(wait=True, cancel_futures=True)
        codes.update({futures[f].run_dir: f.result() for f in futures
                      if f.done() and not f.cancelled() and f.result() is not None})
    finally:
        pool.shutdown(wait=True)
        bar.close()
        signal.signal(signal.SIGTERM, previous)
    return codes, interrupted


def result_of(p: Plan, base: Path, out: Path, code: int | None) -> RunResult:
    """What the run left behind, after this invocation: done when it no longer needs running."""
    now = plan(p.run, base, out)
    if now.action == "skip":
        status = "done"
    elif code is not None and code != 0:
        status = "failed"
    else:
        status = "incomplete" if p.run_dir.is_dir() else "not run"
    error = "" if status == "done" else _last_line(p.run_dir / LOG)
    if status == "failed":
        error = f"exit {code}: {error}"
    return RunResult(p.run, p.run_dir, status, sweeptables.read_records(p.run_dir), _wall(p.run_dir), error)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        sweep = build_sweep(args)
        runs = sweep.runs()
        plans = [plan(run, sweep.base, args.out) for run in runs]
    except SweepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.print_commands:
        for p in plans:
            if p.action != "skip":
                print(shell_command(p))
        return 0
    skipped = sum(p.action == "skip" for p in plans)
    print(f"sweep: {len(plans)} runs, {skipped} already done, {len(plans) - skipped} to "
          f"{'collect' if args.collect else 'run'} in {args.out}", file=sys.stderr)
    codes, interrupted = ({}, False) if args.collect else execute(plans, args.jobs, not args.no_progress)
    results = [result_of(p, sweep.base, args.out, codes.get(p.run_dir)) for p in plans]
    swept = sweep.swept_keys()
    checkpoint.atomic_write(args.out / "results.csv", sweeptables.csv_text(results, swept))
    summary = sweeptables.summary_markdown(results, swept, args.tune, args.by)
    checkpoint.atomic_write(args.out / "summary.md", summary)
    print(summary)
    for result in results:
        if result.status != "done":
            print(f"{result.status}: {result.run_dir}: {result.error}", file=sys.stderr)
    print(f"wrote {args.out / 'results.csv'} and {args.out / 'summary.md'}", file=sys.stderr)
    if interrupted:
        return 130
    return 0 if all(r.status == "done" for r in results) else 1


def _length_reachable(saved: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Whether the saved run can grow into the wanted length: same unit, not shorter."""
    for key in ("train.steps", "train.epochs"):
        if (saved[key] is None) != (wanted[key] is None):
            return False
        if saved[key] is not None and wanted[key] < saved[key]:
            return False
    return True


def _complete(records: list[dict[str, Any]], config: dict[str, Any]) -> bool:
    """Whether the last record is the run's final step (an epochs-long run: its epoch reached)."""
    if not records:
        return False
    if config["train.steps"] is not None:
        return records[-1]["step"] == config["train.steps"]
    return records[-1]["epoch"] >= config["train.epochs"] * (1 - 1e-9)


def _wall(run_dir: Path) -> float | None:
    try:
        return float(json.loads((run_dir / WALL).read_text())["wall_s"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "empty log"


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
