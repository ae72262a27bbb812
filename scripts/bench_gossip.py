"""Time training steps of every algorithm side by side, through the Trainer, and split them.

    python scripts/bench_gossip.py [--models quickstart,lstm,resnet20] [--algorithms LABELS]
        [--processes 1,2] [--workers 4] [--steps N] [--warmup 1] [--repeats 1] [--quick] [--json OUT]

For each model, process count ``P`` and worker count ``n`` (``n = max(--workers, P)``, on a ring), the
script starts ``P`` gloo processes on 127.0.0.1 (also for ``P = 1``) and, in each, builds a real
:class:`gossip.Trainer` from a config for every algorithm in turn: ``--warmup`` untimed steps, then
``--steps`` timed ones (``--repeats`` times, interleaved, so that a busy spell of the machine hits
every algorithm alike). The models:

- ``quickstart``: ``configs/quickstart.yaml`` as it is (its offline corpus);
- ``lstm``: the paper's LSTM (3 × 650, vocabulary 33,278, BPTT 30 × batch 64), ``--quick``: 2 × 200
  and 10,000 words; ``resnet20``: ResNet-20 on batches of 128 images; ``mlp``: ``--mlp`` widths. These
  three train on random batches of their shapes (the registered task ``random``): no data needed.

A row per (model, algorithm, processes, workers) holds the trainer's own time split per step of the
slowest process (median over repetitions): ``compute_s`` (forward and backward of the process's
workers), ``comm_wait_s`` (blocked on messages), ``codec_s`` (the rest: encoding, decoding,
projections, mixing and the optimizer), with ``step_s``, ``bytes_per_step`` (sent per worker),
``ratio_to_local`` (the step over local SGD's) and ``codec_share`` (``codec_s`` less local SGD's,
i.e. without the optimizer step every method takes, over ``compute_s``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from bench_common import (cpu_description, format_table, parse_list, pick_device,  # scripts/ is on sys.path
                          synchronize, usable_cores, warn_if_busy)

from gossip import config as config_module
from gossip.algorithms import ALGORITHMS
from gossip.comm.messages import Network
from gossip.comm.spawn import spawn
from gossip.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]

#: The algorithms measured: label -> the config's ``algorithm`` section.
ALGORITHM_CONFIGS: dict[str, dict[str, Any]] = {
    "local": {"name": "local"},
    "allreduce": {"name": "allreduce"},
    "dpsgd": {"name": "dpsgd"},
    "powergossip-1": {"name": "powergossip", "iterations": 1},
    "powergossip-8": {"name": "powergossip", "iterations": 8},
    "choco-sign": {"name": "choco", "codec": "sign"},
    "choco-topk": {"name": "choco", "codec": {"name": "topk", "fraction": 0.01}},
    "deepsqueeze": {"name": "deepsqueeze", "codec": "sign"},
    "moniqua": {"name": "moniqua"},
}
REFERENCE = "local"
MODELS = ("quickstart", "lstm", "resnet20", "mlp")
COLUMNS = ("step_s", "compute_s", "codec_s", "comm_wait_s", "bytes_per_step")


def model_config(model: str, args: argparse.Namespace) -> dict[str, Any]:
    """The config (plain data, without ``workers``, ``algorithm`` and ``train.steps``) of ``model``."""
    if model == "quickstart":
        raw = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
        raw["train"].pop("epochs")
        return raw
    task: dict[str, Any] = {"name": "random", "model": model}
    if model == "lstm":
        task.update(vocabulary=10_000, hidden=200, layers=2) if args.quick else None
        optimizer, batch = {"lr": 0.01, "clip_norm": 0.4}, 64
    elif model == "resnet20":
        optimizer, batch = {"lr": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4}, 128
    else:
        task["widths"] = [int(w) for w in parse_list(args.mlp)]
        optimizer, batch = {"lr": 0.01, "momentum": 0.9}, args.mlp_batch
    return {"seed": 0, "topology": {"name": "ring"}, "task": task, "optimizer": optimizer,
            "train": {"batch_size": batch}}


def build_config(raw: dict[str, Any], label: str, workers: int, steps: int) -> config_module.Config:
    """The run's config for algorithm ``label`` on ``workers`` workers, ``steps`` steps long."""
    raw = config_module.apply_overrides(raw, [])
    raw.update(workers=workers, algorithm=dict(ALGORITHM_CONFIGS[label]))
    raw["train"] = dict(raw["train"], steps=steps, eval_every=steps)
    return config_module.from_dict(raw)


def time_steps(trainer: Trainer, steps: int) -> dict[str, float]:
    """Run ``steps`` steps; the trainer's time split per step, and bytes sent per worker per step."""
    network = trainer.network
    before = dict(trainer.time), [network.bytes_sent[i] for i in network.local_workers]
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    synchronize(network.device)
    elapsed = time.perf_counter() - start
    sent = [network.bytes_sent[i] - b for i, b in zip(network.local_workers, before[1])]
    split = {f"{part}_s": (trainer.time[key] - before[0][key]) / steps
             for part, key in (("compute", "compute"), ("codec", "codec"), ("comm_wait", "comm"))}
    return {"step_s": elapsed / steps, **split, "bytes_per_step": statistics.fmean(sent) / steps}


def run_job(rank: int, world_size: int, job: dict[str, Any]) -> dict[str, list[dict[str, float]]]:
    """In process ``rank``: every algorithm's timings per repetition, for this process's workers."""
    torch.set_num_threads(job["threads"])
    device = pick_device(job["device"], rank)
    results: dict[str, list[dict[str, float]]] = {label: [] for label in job["labels"]}
    for _ in range(job["repeats"]):
        for label in job["labels"]:
            config = build_config(job["raw"], label, job["workers"], job["warmup"] + job["steps"])
            network = Network(config.workers, rank, world_size, device)
            trainer = Trainer(config, network, progress=False)
            for _ in range(job["warmup"]):
                trainer.train_step()
            network.barrier()
            results[label].append(time_steps(trainer, job["steps"]))
            network.barrier()
    return results


def make_rows(model: str, processes: int, workers: int, per_rank: list[dict[str, list[dict[str, float]]]]
              ) -> list[dict[str, Any]]:
    """One row per algorithm: per repetition the slowest process, then the median of each column."""
    rows = []
    for label in per_rank[0]:
        repetitions = [max((rank[label][r] for rank in per_rank), key=lambda t: t["step_s"])
                       for r in range(len(per_rank[0][label]))]
        row = {"model": model, "algorithm": label, "processes": processes, "workers": workers,
               "iterations": ALGORITHM_CONFIGS[label].get("iterations", 0 if label == REFERENCE else 1)}
        row.update({key: statistics.median(rep[key] for rep in repetitions) for key in COLUMNS})
        row["repetitions"] = repetitions
        rows.append(row)
    reference = next((row for row in rows if row["algorithm"] == REFERENCE), None)
    for row in rows:
        row["ratio_to_local"] = row["step_s"] / reference["step_s"] if reference else None
        row["codec_share"] = ((row["codec_s"] - reference["codec_s"]) / row["compute_s"]
                              if reference and row["compute_s"] > 0 else None)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table (milliseconds, kB)."""
    def ms(value: float) -> str:
        return f"{1000 * value:.1f}"

    def share(value: float | None) -> str:
        return "—" if value is None else f"{100 * value:.1f} %"

    cells = [[r["model"], r["algorithm"], str(r["processes"]), str(r["workers"]), ms(r["step_s"]), ms(r["compute_s"]),
              ms(r["codec_s"]), ms(r["comm_wait_s"]), f"{r['bytes_per_step'] / 1e3:,.1f}",
              "—" if r["ratio_to_local"] is None else f"{r['ratio_to_local']:.2f}×", share(r["codec_share"])]
             for r in rows]
    return format_table(["model", "algorithm", "P", "n", "step ms", "compute ms", "codec ms", "comm wait ms",
                         "kB sent/step", "step/local", "codec/compute"], cells)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="quickstart,lstm,resnet20", help=f"comma-separated: {', '.join(MODELS)}")
    parser.add_argument("--algorithms", default=",".join(ALGORITHM_CONFIGS), help="comma-separated labels")
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts P")
    parser.add_argument("--workers", default="4", help="comma-separated worker counts n (n = P when P > n)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per repetition (default 3, quick 1)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    parser.add_argument("--repeats", type=int, default=1, help="repetitions; each column is their median")
    parser.add_argument("--quick", action="store_true", help="a narrower LSTM (same batch shapes), one timed step")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="cuda when present (auto)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process (default: cores / P)")
    parser.add_argument("--mlp", default="784,1024,1024,10", help="the mlp model's widths, input first")
    parser.add_argument("--mlp-batch", type=int, default=128, help="the mlp model's batch size per worker")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per model and process count")
    parser.add_argument("--json", type=Path, default=None, help="write the rows as a JSON list here")
    args = parser.parse_args(argv)
    unknown = [m for m in parse_list(args.models) if m not in MODELS]
    if unknown:
        parser.error(f"--models: unknown {', '.join(unknown)}; allowed: {', '.join(MODELS)}")
    if args.steps is None:
        args.steps = 1 if args.quick else 3
    if min(args.steps, args.repeats) < 1 or args.warmup < 0:
        parser.error("--steps and --repeats must be at least 1, --warmup at least 0")
    return args


def algorithm_labels(requested: list[str]) -> list[str]:
    """The known labels of ``requested``, saying in one line which are skipped and why."""
    labels = []
    for label in requested:
        if label not in ALGORITHM_CONFIGS:
            print(f"skipping {label!r}: unknown label; known: {', '.join(ALGORITHM_CONFIGS)}", flush=True)
        elif ALGORITHM_CONFIGS[label]["name"] not in ALGORITHMS.entries:
            print(f"skipping {label!r}: algorithm {ALGORITHM_CONFIGS[label]['name']!r} is not registered", flush=True)
        else:
            labels.append(label)
    return labels


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    labels = algorithm_labels(parse_list(args.algorithms))
    warn_if_busy()
    rows: list[dict[str, Any]] = []
    for model in parse_list(args.models):
        raw = model_config(model, args)
        for processes in (int(p) for p in parse_list(args.processes)):
            for workers in sorted({max(int(n), processes) for n in parse_list(args.workers)}):
                job = {"raw": raw, "labels": labels, "workers": workers, "steps": args.steps, "warmup": args.warmup,
                       "repeats": args.repeats, "device": args.device,
                       "threads": args.threads or max(1, usable_cores() // processes)}
                print(f"{model}: P = {processes}, n = {workers}", flush=True)
                rows += make_rows(model, processes, workers, spawn(run_job, processes, job, timeout=args.timeout))
    print(table(rows))
    device = pick_device(args.device)
    print(torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_description())
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
