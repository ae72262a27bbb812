"""Plot runs side by side: ``python scripts/plot.py RUN_DIR [RUN_DIR ...] --out FIG.png``.

Four panels from each run's ``metrics.jsonl``: training loss against steps, the averaged model's
evaluation metric against steps and against bytes sent per worker, and the consensus distance.
The legend names each run by its algorithm and the options it changed (from its ``config.yaml``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import yaml

from gossip.algorithms import ALGORITHMS


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
    defaults = dataclasses.asdict(ALGORITHMS.entries[name][0]()) if name in ALGORITHMS.entries else {}
    options = " ".join(f"{k}={v}" for k, v in algorithm.items() if v is not None and defaults.get(k) != v)
    return (f"{name} {options}".strip(), records)


def metric_key(records: list[dict]) -> str:
    """The headline evaluation metric the runs logged."""
    for key in ("eval_perplexity", "eval_accuracy", "eval_loss"):
        if key in records[-1]:
            return key
    return "train_loss"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument("--out", type=Path, required=True, metavar="FIG.png")
    args = parser.parse_args(argv)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print('error: plotting needs matplotlib: pip install -e ".[plot]"', file=sys.stderr)
        return 2
    runs = [load_run(run_dir) for run_dir in args.runs]
    labels = [label for label, _ in runs]
    if len(set(labels)) < len(labels):
        labels = [f"{label} ({run_dir.name})" for label, run_dir in zip(labels, args.runs)]
    metric = metric_key(runs[0][1])
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    panels = [(axes[0, 0], "step", "train_loss", False), (axes[0, 1], "step", metric, False),
              (axes[1, 0], "bytes_per_worker", metric, True), (axes[1, 1], "step", "consensus_distance", False)]
    for ax, x_key, y_key, log_x in panels:
        for label, (_, records) in zip(labels, runs):
            points = [(r[x_key], r[y_key]) for r in records if y_key in r and x_key in r]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, label=label)
        ax.set_xlabel("bytes sent per worker" if x_key == "bytes_per_worker" else "step")
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
