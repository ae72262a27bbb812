"""Plot runs side by side: ``python scripts/plot.py RUN_DIR [RUN_DIR ...] --out FIG.png
[--x step|bytes_per_worker|sim_time_s]``, or a sweep's configurations: ``python scripts/plot.py
--sweep DIR --out FIG.png [--x ...] [--y eval_loss] [--band minmax|std]``.

Runs: four panels from each run's ``metrics.jsonl``: training loss, the averaged model's evaluation
metric and the consensus distance against ``--x`` (steps by default; ``sim_time_s``, the simulated
time of runs with a ``network`` section; or bytes sent per worker), and the metric against bytes. The legend names each run by its algorithm and the options it changed (from its
``config.yaml``).

A sweep (the directory ``python -m gossip.sweep`` wrote): one line per configuration (row label
and swept values, from ``DIR/results.csv``), the mean over its seeds at every step they all
measured, with a band from the smallest to the largest seed's value (``--band std``: mean ± one
sample standard deviation).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import yaml

from gossip.algorithms import ALGORITHMS
from gossip.sweep.sweeptables import read_csv, read_records

#: The x axes a plot can have, and their labels.
X_AXES = {"step": "step", "bytes_per_worker": "bytes sent per worker", "sim_time_s": "simulated time (s)"}


def load_run(run_dir: Path) -> tuple[str, list[dict]]:
    """The run's legend label and its metric records."""
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise SystemExit(f"error: {run_dir} has no metrics.jsonl (is it a run directory?)")
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    if not records:
        raise SystemExit(f"error: {metrics} is empty")
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else {}
    algorithm = dict(config.get("algorithm", {}))
    name = algorithm.pop("name", run_dir.name)
    defaults = dataclasses.asdict(ALGORITHMS.entries[name].Options()) if name in ALGORITHMS.entries else {}
    options = " ".join(f"{k}={v}" for k, v in algorithm.items() if v is not None and defaults.get(k) != v)
    return (f"{name} {options}".strip(), records)


def metric_key(records: list[dict]) -> str:
    """The headline evaluation metric the runs logged."""
    for key in ("eval_perplexity", "eval_accuracy", "eval_loss"):
        if key in records[-1]:
            return key
    return "train_loss"


def load_sweep(sweep_dir: Path) -> dict[str, list[list[dict]]]:
    """Each configuration's legend label and the metric records of its runs (one list per seed)."""
    results = sweep_dir / "results.csv"
    if not results.is_file():
        raise SystemExit(f"error: {sweep_dir} has no results.csv (is it a sweep directory?)")
    try:
        swept, rows = read_csv(results)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    configurations: dict[str, list[list[dict]]] = defaultdict(list)
    for row in rows:
        records = read_records(sweep_dir / "runs" / Path(row["run_dir"]).name)
        if records:
            label = " ".join([row["label"], *(f"{k}={row[k]}" for k in swept if row[k] != "")])
            configurations[label].append(records)
    if not configurations:
        raise SystemExit(f"error: no run of {sweep_dir} has metrics yet")
    return configurations


def band(seeds: list[list[dict]], x_key: str, y_key: str, spread: str) -> tuple[list[float], ...]:
    """x, mean, low and high over the seeds at every step that all of them measured."""
    by_step = [{r["step"]: r for r in records if x_key in r and y_key in r} for records in seeds]
    steps = sorted(set.intersection(*(set(s) for s in by_step)))
    xs, means, lows, highs = [], [], [], []
    for step in steps:
        ys = [s[step][y_key] for s in by_step]
        mean = statistics.mean(ys)
        std = statistics.stdev(ys) if len(ys) > 1 else 0.0
        xs.append(statistics.mean(s[step][x_key] for s in by_step))
        means.append(mean)
        lows.append(min(ys) if spread == "minmax" else mean - std)
        highs.append(max(ys) if spread == "minmax" else mean + std)
    return xs, means, lows, highs


def plot_sweep(plt, args: argparse.Namespace) -> None:
    configurations = load_sweep(args.sweep)
    fig, ax = plt.subplots(figsize=(8, 5))
    for label, seeds in configurations.items():
        xs, means, lows, highs = band(seeds, args.x, args.y, args.band)
        if xs:
            (line,) = ax.plot(xs, means, label=f"{label} ({len(seeds)} seeds)")
            ax.fill_between(xs, lows, highs, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel(X_AXES[args.x])
    ax.set_ylabel(f"{args.y} (mean over seeds; band: {'min to max' if args.band == 'minmax' else '± std'})")
    if args.x == "bytes_per_worker":
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path, metavar="RUN_DIR")
    parser.add_argument("--sweep", type=Path, metavar="DIR", help="a sweep directory: its configurations with bands")
    parser.add_argument("--out", type=Path, required=True, metavar="FIG.png")
    parser.add_argument("--x", choices=tuple(X_AXES), default="step",
                        help="the x axis: steps, bytes sent per worker or simulated time (runs with a network)")
    parser.add_argument("--y", default="eval_loss", help="with --sweep: the metric to plot (default eval_loss)")
    parser.add_argument("--band", choices=("minmax", "std"), default="minmax",
                        help="with --sweep: the band over seeds, min to max (default) or mean ± std")
    args = parser.parse_args(argv)
    if bool(args.runs) == (args.sweep is not None):
        parser.error("give either RUN_DIR ... or --sweep DIR")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print('error: plotting needs matplotlib: pip install -e ".[plot]"', file=sys.stderr)
        return 2
    if args.sweep is not None:
        plot_sweep(plt, args)
        print(f"wrote {args.out}")
        return 0
    runs = [load_run(run_dir) for run_dir in args.runs]
    labels = [label for label, _ in runs]
    if len(set(labels)) < len(labels):
        labels = [f"{label} ({run_dir.name})" for label, run_dir in zip(labels, args.runs)]
    for run_dir, (_, records) in zip(args.runs, runs):
        if args.x not in records[-1]:
            print(f"error: {run_dir} has no {args.x} (sim_time_s needs a network section)", file=sys.stderr)
            return 2
    metric = metric_key(runs[0][1])
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    log_x = args.x == "bytes_per_worker"
    panels = [(axes[0, 0], args.x, "train_loss", log_x), (axes[0, 1], args.x, metric, log_x),
              (axes[1, 0], "bytes_per_worker", metric, True), (axes[1, 1], args.x, "consensus_distance", log_x)]
    for ax, x_key, y_key, log_x in panels:
        for label, (_, records) in zip(labels, runs):
            points = [(r[x_key], r[y_key]) for r in records if y_key in r and x_key in r]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, label=label)
        ax.set_xlabel(X_AXES[x_key])
        ax.set_ylabel(y_key)
        if log_x:
            ax.set_xscale("log")
        if y_key == "consensus_distance":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(3, len(names)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
