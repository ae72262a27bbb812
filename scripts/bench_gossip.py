"""Time one training step of every algorithm side by side, on the paper's models and batch shapes.

    python scripts/bench_gossip.py [--models lstm,resnet20,mlp] [--algorithms ...] [--processes 1,2]
        [--workers N] [--repeats R] [--quick] [--scale-to 32] [--json OUT]

For each model and process count, ``n`` workers on a ring (``n = max(--workers, P)``) train on random
batches of the paper's shapes in ``P`` gloo processes on 127.0.0.1 (``P = 1`` too: one process hosting
all ``n`` workers), every algorithm in turn, in the same run. A repetition starts an algorithm afresh,
takes ``--warmup`` untimed steps, then times ``--steps`` steps (their mean is its value); the ``R``
repetitions are interleaved (repetition r of every algorithm before repetition r + 1 of any), so that
a busy spell of the machine hits all algorithms alike. Each process times its own workers and per
repetition the slowest process counts; every column is the median of its repetitions. A step's wall
time is split as the trainer splits it:

- ``compute_s``: forward and backward of the process's workers (inside ``compute_gradients``);
- ``comm_wait_s``: time blocked waiting for messages (growth of ``Network.comm_wait_s``); it also
  holds the time a process waits for a slower peer to finish its own compute (load imbalance), so
  ``comm_wait_least_s`` gives the wait of the process that waited least (median over repetitions):
  what the communication itself costs;
- ``codec_s``: the rest of the step: encode, decode, projections, mixing and the optimizer update.

``ratio_to_local`` is the step time per worker over local SGD's (no communication) on the same model
and processes; ``compute_to_local``, ``codec_to_local`` and ``comm_wait_to_local`` are the parts over
the same reference. ``codec_extra_s`` is ``codec_s`` less local SGD's (the optimizer step that every
method takes): the method's own work, which issue 8's targets bound. ``bytes_per_step`` is what one
worker sends per step, from the network's count. On CPU each process uses ``cores / P`` torch threads
(``--threads``); the script warns when other processes already keep the CPU busy.

The row ``ddp-powersgd`` is what users would pick instead: ``DistributedDataParallel`` with
``powerSGD_hook`` (rank 1), one model per process (``workers = processes``), same model and batch. DDP
overlaps compression and all-reduce with the backward pass, so they cannot be told apart: its
``compute_s`` is a forward/backward without synchronisation (``no_sync``) timed in the same step, its
``codec_s`` everything that DDP adds to that (hook, all-reduce, optimizer), its ``comm_wait_s`` null,
and its ``bytes_per_step`` the ring all-reduce count of what the hook sends.

Simulation scaling: ``local``, ``dpsgd`` and ``powergossip-1`` are timed once more on the MLP
(``--scale-model``) with ``--scale-to`` workers (default 32) in one process; a worker's step there
should stay within 1.1× of its step with ``--workers`` (issue 8's target). Both ring sizes are
measured in the same one-process job, each algorithm at ``--workers`` and then at ``--scale-to``
within every repetition, so that the ratio compares measurements taken seconds apart, not minutes.

The targets table computes every target once per repetition, from rows of the same job measured
within that repetition, and shows the median, the range over the repetitions and a verdict on the
median; each row's ``repetitions`` in the JSON holds its per-repetition values.

The codec micro-benchmark is ``scripts/bench_codecs.py``; docs/performance.md has the latest tables.
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib.util
import json
import math
import multiprocessing as mp
import os
import queue as queue_module
import signal
import socket
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from gossip.config import OptimizerConfig  # noqa: E402

Batch = tuple[torch.Tensor, ...]

#: The algorithms measured: label -> (registered name, options).
ALGORITHM_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "local": ("local", {}),
    "allreduce": ("allreduce", {}),
    "dpsgd": ("dpsgd", {}),
    "powergossip-1": ("powergossip", {"iterations": 1}),
    "powergossip-8": ("powergossip", {"iterations": 8}),
    "choco-sign": ("choco", {"codec": "sign"}),
    "choco-topk": ("choco", {"codec": "topk", "fraction": 0.01}),
    "deepsqueeze": ("deepsqueeze", {"codec": "sign"}),
    "moniqua": ("moniqua", {}),
}
DDP_LABEL = "ddp-powersgd"
DDP_START_ITER = 2  # PowerSGD needs two plain all-reduce steps first (warm start, error feedback)
REFERENCE_LABEL = "local"
SCALING_LABELS = ("local", "dpsgd", "powergossip-1")  # measured again at n = --scale-to (one process)
SCALING_LIMIT = 1.1  # issue 8: a worker's step at n = 32 within 1.1× of n = 4
MODELS = ("lstm", "resnet20", "mlp")
SEED = 0
BATCHES_PER_WORKER = 2  # random batches drawn once per worker and cycled, so no data work is timed


# --------------------------------------------------------------------------------------------
# Settings and workloads (model + random batches + loss)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    """What every measurement of the run shares."""

    quick: bool
    workers: int
    warmup: int
    steps: int
    repeats: int
    device: str
    threads: Optional[int]
    mlp_sizes: tuple[int, ...]
    mlp_batch: int


@dataclass
class Workload:
    """A model, how to draw a random batch of the paper's shape for it, and its loss."""

    name: str
    description: str
    build: Callable[[], nn.Module]
    batch: Callable[[torch.Generator, torch.device], Batch]
    loss: Callable[[nn.Module, Batch, dict], torch.Tensor]
    optimizer: OptimizerConfig


def classification_loss(model: nn.Module, batch: Batch, memory: dict) -> torch.Tensor:
    inputs, targets = batch
    return nn.functional.cross_entropy(model(inputs), targets)


def random_classification_batch(shape: tuple[int, ...], classes: int) -> Callable[[torch.Generator, torch.device], Batch]:
    """A batch maker of standard-normal inputs of ``shape`` (batch first) and uniform labels."""
    def draw(gen: torch.Generator, device: torch.device) -> Batch:
        inputs = torch.randn(shape, generator=gen).to(device)
        return inputs, torch.randint(classes, (shape[0],), generator=gen).to(device)
    return draw


def mlp_workload(settings: Settings) -> Workload:
    """A ReLU MLP with the layer widths ``settings.mlp_sizes`` (input first, classes last)."""
    sizes = settings.mlp_sizes

    def build() -> nn.Module:
        layers: list[nn.Module] = []
        for width_in, width_out in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(width_in, width_out), nn.ReLU()]
        return nn.Sequential(*layers[:-1])

    return Workload("mlp", f"MLP {'-'.join(map(str, sizes))}, batch {settings.mlp_batch}", build,
                    random_classification_batch((settings.mlp_batch, sizes[0]), sizes[-1]),
                    classification_loss, OptimizerConfig(lr=0.01, momentum=0.9))


def language_model_loss(model: nn.Module, batch: Batch, memory: dict) -> torch.Tensor:
    """Next-token cross-entropy; the hidden state carries over from the worker's previous batch."""
    inputs, targets = batch
    logits, state = model(inputs, memory.get("state"))
    memory["state"] = tuple(s.detach() for s in state)
    return nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())


def lstm_workload(settings: Settings) -> Workload:
    """The paper's LSTM (3 layers of 650, vocabulary 33,278, tied) on BPTT 30 × batch 64 tokens;
    ``--quick`` narrows it to 2 layers of 200 and 10,000 words. Both the forward/backward and the
    PowerGossip projections scale with the weight matrices' sizes, so their ratio stays put."""
    from gossip.tasks.models import LSTMLanguageModel

    vocab, width, layers = (10_000, 200, 2) if settings.quick else (33_278, 650, 3)
    bptt, batch = 30, 64

    def draw(gen: torch.Generator, device: torch.device) -> Batch:
        tokens = torch.randint(vocab, (bptt + 1, batch), generator=gen).to(device)
        return tokens[:-1], tokens[1:]

    return Workload("lstm", f"LSTM {layers}×{width}, vocabulary {vocab:,}, tied, BPTT {bptt} × batch {batch}",
                    lambda: LSTMLanguageModel(vocab, width, width, layers, dropout=0.4), draw,
                    language_model_loss, OptimizerConfig(lr=0.01, clip_norm=0.4))


def resnet20_workload(settings: Settings) -> Workload:
    """ResNet-20 (272,474 parameters) on batches of 128 images of 3×32×32, as in the paper (also
    with ``--quick``: the model is small already)."""
    from gossip.tasks.models import ResNet20

    return Workload("resnet20", "ResNet-20, batch 128 of 3×32×32", ResNet20,
                    random_classification_batch((128, 3, 32, 32), 10), classification_loss,
                    OptimizerConfig(lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4))


WORKLOADS: dict[str, Callable[[Settings], Workload]] = {
    "lstm": lstm_workload, "resnet20": resnet20_workload, "mlp": mlp_workload}


def unavailable_models(names: list[str]) -> dict[str, str]:
    """``{model: why it cannot run}`` for the requested models that are unknown or not written yet."""
    missing = {name: f"unknown model (known: {', '.join(WORKLOADS)})" for name in names if name not in WORKLOADS}
    if importlib.util.find_spec("gossip.tasks.models") is None:
        missing.update({name: "not available yet (no gossip.tasks.models)"
                        for name in names if name in ("lstm", "resnet20")})
    return missing


def initial_model(workload: Workload) -> nn.Module:
    """The same initial point for every worker and every algorithm."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        return workload.build()


class BatchCycle:
    """A few random batches drawn once for one worker, handed out in turn."""

    def __init__(self, workload: Workload, worker: int, device: torch.device) -> None:
        gen = torch.Generator().manual_seed(SEED * 1000 + worker)
        self.batches = [workload.batch(gen, device) for _ in range(BATCHES_PER_WORKER)]
        self.count = 0

    def next(self) -> Batch:
        self.count += 1
        return self.batches[self.count % len(self.batches)]


# --------------------------------------------------------------------------------------------
# Algorithms
# --------------------------------------------------------------------------------------------

def registered_algorithms() -> set[str]:
    from gossip.algorithms import ALGORITHMS

    return set(ALGORITHMS.entries)


def unavailable_algorithms(labels: list[str]) -> dict[str, str]:
    """``{label: why it cannot run}`` for the requested labels that are unknown or not registered."""
    registered = registered_algorithms()
    missing = {}
    for label in labels:
        if label == DDP_LABEL:
            continue
        if label not in ALGORITHM_CONFIGS:
            missing[label] = f"unknown label (known: {', '.join([*ALGORITHM_CONFIGS, DDP_LABEL])})"
        elif ALGORITHM_CONFIGS[label][0] not in registered:
            missing[label] = f"algorithm {ALGORITHM_CONFIGS[label][0]!r} is not registered yet"
    return missing


def iterations_of(label: str) -> int:
    """Gossip rounds per step: the ``iterations`` option, 0 for local SGD, else 1."""
    if label == REFERENCE_LABEL:
        return 0
    return ALGORITHM_CONFIGS.get(label, ("", {}))[1].get("iterations", 1)


def build_algorithm(label: str, network: Any, workers: list) -> Any:
    from gossip.algorithms import ALGORITHMS
    import topologies

    name, options = ALGORITHM_CONFIGS[label]
    options_class = ALGORITHMS.options(name, "algorithm")
    return ALGORITHMS.implementation(name)(topologies.ring(network.n), network, workers,
                                           options=options_class(**options), seed=SEED)


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------

@dataclass
class Timing:
    """Per-step means over one repetition of one process."""

    step_s: float
    compute_s: float
    codec_s: float
    comm_wait_s: Optional[float]
    bytes_per_step: float


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that wall-clock time covers it (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_repetition(step: Callable[[int], tuple[float, float, Optional[float]]], bytes_sent: Callable[[], float],
                     warmup: int, steps: int, barrier: Callable[[], None]) -> Timing:
    """``warmup`` untimed steps, then ``steps`` timed ones, started together by all processes;
    ``step(t)`` returns one step's ``(step_s, compute_s, comm_wait_s)``. Bytes are averaged over
    all the steps (``bytes_sent()`` counts from the start), as PowerGossip's alternate between the
    two sides of its matrices from step to step."""
    for t in range(warmup):
        step(t)
    barrier()
    samples = [step(t) for t in range(warmup, warmup + steps)]
    return mean_timing(samples, bytes_sent() / (warmup + steps))


def mean_timing(samples: list[tuple[float, float, Optional[float]]], bytes_per_step: float) -> Timing:
    step_s, compute_s = (statistics.fmean(column) for column in list(zip(*samples))[:2])
    waits = [sample[2] for sample in samples]
    comm_wait_s = None if None in waits else statistics.fmean(waits)
    return Timing(step_s, compute_s, step_s - compute_s - (comm_wait_s or 0.0), comm_wait_s, bytes_per_step)


def measure_gossip(label: str, workload: Workload, rank: int, processes: int, settings: Settings,
                   device: torch.device) -> Timing:
    """One repetition of ``label`` for the workers of process ``rank``, from a fresh start."""
    from gossip.network import Network
    from gossip.worker import Worker

    network = Network(settings.workers, rank, processes, device)
    model = initial_model(workload)
    workers = [Worker(i, copy.deepcopy(model), workload.optimizer, SEED, device) for i in network.local_workers]
    algorithm = build_algorithm(label, network, workers)
    batches = {w.id: BatchCycle(workload, w.id, device) for w in workers}
    memories: dict[int, dict] = {w.id: {} for w in workers}

    def forward_backward() -> None:
        for w in workers:
            w.grads.zero_()
            with w.forked_rng():
                workload.loss(w.model, batches[w.id].next(), memories[w.id]).backward()

    def step(t: int) -> tuple[float, float, float]:
        compute = [0.0]

        def compute_gradients() -> None:
            start = time.perf_counter()
            forward_backward()
            synchronize(device)
            compute[0] += time.perf_counter() - start

        wait0, start = network.comm_wait_s, time.perf_counter()
        algorithm.step(t, workload.optimizer.lr, compute_gradients)
        synchronize(device)
        return time.perf_counter() - start, compute[0], network.comm_wait_s - wait0

    def bytes_sent() -> float:
        return statistics.fmean(network.bytes_sent[i] for i in network.local_workers)

    return timed_repetition(step, bytes_sent, settings.warmup, settings.steps, network.barrier)


def powersgd_bytes(model: nn.Module, processes: int, rank: int = 1, min_compression_rate: float = 2) -> float:
    """Bytes one process sends per step under ``powerSGD_hook``, counted as a ring all-reduce sends:
    ``2 (P − 1) / P`` × 4 × (``r (n + m)`` for each matrix worth compressing, else its size)."""
    floats = 0
    for p in model.parameters():
        n, m = p.shape[0], p.numel() // p.shape[0]
        r = min(n, m, rank)
        floats += r * (n + m) if r * (n + m) * min_compression_rate < n * m else n * m
    return 2 * (processes - 1) / processes * 4 * floats


def single_bucket_mb(model: nn.Module) -> int:
    """A DDP bucket size that holds the whole model. With gloo, PowerSGD's hook launches its second
    all-reduce from gloo's own threads, so with several buckets the processes can issue the buckets'
    all-reduces in different orders and gloo aborts on the size mismatch; one bucket avoids that."""
    return math.ceil(sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20) + 1


def measure_ddp(workload: Workload, rank: int, processes: int, settings: Settings,
                device: torch.device) -> Timing:
    """One repetition of ``DistributedDataParallel`` + ``powerSGD_hook`` (rank 1), one model per
    process, from a fresh start (at least ``DDP_START_ITER`` warm-up steps, so PowerSGD is on)."""
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as powersgd
    from torch.nn.parallel import DistributedDataParallel

    model = initial_model(workload).to(device)
    ddp = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                  bucket_cap_mb=single_bucket_mb(model) if device.type == "cpu" else None)
    state = powersgd.PowerSGDState(process_group=None, matrix_approximation_rank=1,
                                   start_powerSGD_iter=DDP_START_ITER)
    ddp.register_comm_hook(state, powersgd.powerSGD_hook)
    optimizer = torch.optim.SGD(model.parameters(), lr=workload.optimizer.lr,
                                momentum=workload.optimizer.momentum)
    batches, memory = BatchCycle(workload, rank, device), {}

    def forward_backward() -> None:
        optimizer.zero_grad(set_to_none=False)
        workload.loss(ddp, batches.next(), memory).backward()

    def step(t: int) -> tuple[float, float, None]:
        start = time.perf_counter()
        with ddp.no_sync():
            forward_backward()
        synchronize(device)
        compute_s = time.perf_counter() - start
        start = time.perf_counter()
        forward_backward()
        optimizer.step()
        synchronize(device)
        return time.perf_counter() - start, compute_s, None

    sent_per_step = powersgd_bytes(model, processes)
    return timed_repetition(step, lambda: sent_per_step * state.iter, max(settings.warmup, DDP_START_ITER),
                            settings.steps, dist.barrier)


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Job:
    """One model on ``processes`` processes: every label measured in turn, on ``settings.workers``
    workers and, for the ``scaled`` labels, right after that on ``scale_to`` workers too."""

    model: str
    processes: int
    labels: tuple[str, ...]
    settings: Settings
    scale_to: int = 0
    scaled: tuple[str, ...] = ()

    def rings(self, label: str) -> tuple[int, ...]:
        """The ring sizes ``label`` is measured on, in order."""
        return (self.settings.workers, self.scale_to) if label in self.scaled else (self.settings.workers,)


def pick_device(requested: str, rank: int = 0) -> torch.device:
    """``cuda:rank`` for ``auto`` or ``cuda`` when a GPU is there, else the CPU."""
    if requested == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", rank % torch.cuda.device_count())


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_description(cpuinfo: Path = Path("/proc/cpuinfo"),
                    caches: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> str:
    """The CPU's model, usable cores and per-core L2 and L3 sizes as Linux reports them (what a
    memory-bound timing depends on: whether the working set fits), e.g. "Intel(R) Xeon(R)
    Processor, 2 cores, L2 2 MiB, L3 300 MiB"; the parts the system does not report are left out."""
    parts = [str(usable_cores()) + " cores"]
    models = [line.split(":", 1)[1].strip() for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
              if line.startswith("model name")]
    for index in sorted(caches.glob("index*")):
        try:
            level, kind, size = ((index / name).read_text().strip() for name in ("level", "type", "size"))
        except OSError:
            continue
        if level in ("2", "3") and kind != "Instruction" and size.endswith("K") and size[:-1].isdigit():
            kib = int(size[:-1])
            parts.append(f"L{level} {kib // 1024} MiB" if kib % 1024 == 0 else f"L{level} {kib} KiB")
    return ", ".join(models[:1] + parts)


def busy_cores(seconds: float = 1.0) -> float:
    """How many cores' worth of CPU the machine used over the next ``seconds`` (from /proc/stat;
    the 1-minute load average where there is none)."""
    def idle_and_total() -> tuple[int, int]:
        counters = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return counters[3] + counters[4], sum(counters)
    if not Path("/proc/stat").exists():
        return os.getloadavg()[0]
    idle0, total0 = idle_and_total()
    time.sleep(seconds)
    idle1, total1 = idle_and_total()
    return (os.cpu_count() or 1) * (1 - (idle1 - idle0) / max(1, total1 - total0))


def warn_if_busy() -> None:
    """Say so when other processes already load the CPU: timings taken then are not representative
    (a torch thread that loses its core stalls the others at every parallel region)."""
    busy = busy_cores()
    if busy > 0.25:
        print(f"warning: other processes keep {busy:.1f} of {os.cpu_count()} cores busy: timings will be "
              f"noisy (fewer --threads helps)", flush=True)


def run_job(rank: int, job: Job) -> dict[tuple[str, int], list[Timing]]:
    """Every label of ``job`` on each of its ring sizes, for process ``rank``, by ``(label,
    workers)``; repetitions interleaved (repetition r of every label before repetition r + 1 of
    any), so that a slow spell of the machine hits all alike; rank 0 prints a line per repetition."""
    workload = WORKLOADS[job.model](job.settings)
    device = pick_device(job.settings.device, rank)
    settings = job.settings
    results: dict[tuple[str, int], list[Timing]] = {(label, n): [] for label in job.labels for n in job.rings(label)}
    for repetition in range(settings.repeats):
        for label in job.labels:
            for workers in job.rings(label):
                ring = replace(settings, workers=workers)
                if label == DDP_LABEL:
                    timing = measure_ddp(workload, rank, job.processes, ring, device)
                else:
                    timing = measure_gossip(label, workload, rank, job.processes, ring, device)
                results[(label, workers)].append(timing)
                gc.collect()
        if rank == 0:
            steps = ", ".join(f"{label}{'' if n == settings.workers else f' (n={n})'} {1e3 * timings[-1].step_s:.0f}"
                              for (label, n), timings in results.items())
            print(f"  {job.model} P={job.processes} repetition {repetition + 1}/{settings.repeats}, step ms: {steps}",
                  flush=True)
    return results


def process_entry(rank: int, job: Job, port: int, results: Any) -> None:
    """A spawned process: join the gloo group, measure, report to the parent."""
    import torch.distributed as dist
    from gossip.distributed import resolve_backend

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(job.processes))
    device = pick_device(job.settings.device, rank)
    if device.type == "cpu":
        torch.set_num_threads(job.settings.threads or max(1, usable_cores() // job.processes))
    else:
        torch.cuda.set_device(device)
    try:
        backend = resolve_backend("auto", job.processes)[0] if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=job.processes)
        results.put((rank, run_job(rank, job)))
    except BaseException:  # reported to the parent, which names the failed job
        results.put((rank, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_job(job: Job, timeout_s: float) -> list[dict[tuple[str, int], list[Timing]]]:
    """Run ``job`` in its own processes; their results by rank (a ``RuntimeError`` when one fails)."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=process_entry, args=(r, job, port, results), daemon=True)
             for r in range(job.processes)]
    for p in procs:
        p.start()
    by_rank: dict[int, Any] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(by_rank) < job.processes:
            try:
                rank, value = results.get(timeout=1.0)
            except queue_module.Empty:
                if time.monotonic() > deadline or any(p.exitcode not in (None, 0) for p in procs):
                    raise RuntimeError("a process died or the job timed out") from None
                continue
            if isinstance(value, str):
                raise RuntimeError(f"process {rank} failed:\n{value}")
            by_rank[rank] = value
    finally:
        for p in procs:
            p.join(timeout=10 if len(by_rank) == job.processes else 0)
            if p.is_alive():
                p.kill()
    return [by_rank[r] for r in range(job.processes)]


# --------------------------------------------------------------------------------------------
# Rows, ratios, tables
# --------------------------------------------------------------------------------------------

def slowest_process(per_rank: list[Timing]) -> Timing:
    return max(per_rank, key=lambda timing: timing.step_s)


def median_timing(repetitions: list[Timing]) -> Timing:
    """The median of every column over the repetitions."""
    def median(name: str) -> Optional[float]:
        values = [getattr(t, name) for t in repetitions]
        return None if None in values else statistics.median(values)
    return Timing(**{f.name: median(f.name) for f in fields(Timing)})


def make_row(job: Job, label: str, ring: int, per_rank: list[list[Timing]]) -> dict[str, Any]:
    """One table row from every process's repetitions of ``label`` on ``ring`` workers."""
    repetitions = [slowest_process(list(reps)) for reps in zip(*per_rank)]
    waits = [[timing.comm_wait_s for timing in reps] for reps in zip(*per_rank)]
    least_waits = [None if None in wait else min(wait) for wait in waits]
    workers = job.processes if label == DDP_LABEL else ring
    name = "ddp+powerSGD" if label == DDP_LABEL else ALGORITHM_CONFIGS[label][0]
    return {"model": job.model, "algorithm": label, "registered_as": name,
            "iterations": iterations_of(label), "workers": workers, "processes": job.processes,
            "run_workers": ring,
            "workers_per_process": workers // job.processes,
            "device": pick_device(job.settings.device).type, **asdict(median_timing(repetitions)),
            "comm_wait_least_s": None if None in least_waits else statistics.median(least_waits),
            "repetitions": [{**asdict(timing), "comm_wait_least_s": least}
                            for timing, least in zip(repetitions, least_waits)]}


def codec_beyond_local(codec_s: float, row: dict[str, Any], local_codec_s: float, local: dict[str, Any]) -> float:
    """A method's own work: its ``codec_s`` (of ``row``) less local SGD's (of the ``local`` row of the
    same job), which every method also spends on the optimizer step, scaled to ``row``'s workers."""
    return codec_s - local_codec_s / local["workers_per_process"] * row["workers_per_process"]


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """``ratio_to_local`` and the parts' ratios: per worker, over local SGD of the same model and
    processes; ``codec_extra_s``: ``codec_s`` less local SGD's (the optimizer step that every method
    takes), the method's own encode, decode, projection and mixing work. Null without a local row."""
    references = {run_key(r): r for r in rows if r["algorithm"] == REFERENCE_LABEL}
    for row in rows:
        reference = references.get(run_key(row))
        local_step = reference["step_s"] / reference["workers_per_process"] if reference else None
        row["codec_extra_s"] = None if reference is None else codec_beyond_local(
            row["codec_s"], row, reference["codec_s"], reference)
        for part, key in [("step_s", "ratio_to_local"), ("compute_s", "compute_to_local"),
                          ("codec_s", "codec_to_local"), ("comm_wait_s", "comm_wait_to_local")]:
            value = row[part]
            row[key] = None if local_step is None or value is None else value / row["workers_per_process"] / local_step


def run_key(row: dict[str, Any]) -> tuple[str, int, int]:
    """Rows measured in the same job (model, processes, workers on the ring) share a reference."""
    return row["model"], row["processes"], row["run_workers"]


def fraction(numerator: Optional[float], denominator: Optional[float]) -> Optional[float]:
    return None if numerator is None or not denominator else numerator / denominator


TABLE_COLUMNS: list[tuple[str, Callable[[dict], Any], str]] = [
    ("model", lambda r: r["model"], "{}"),
    ("algorithm", lambda r: r["algorithm"], "{}"),
    ("s", lambda r: r["iterations"], "{}"),
    ("n", lambda r: r["workers"], "{}"),
    ("P", lambda r: r["processes"], "{}"),
    ("step ms", lambda r: 1e3 * r["step_s"], "{:.1f}"),
    ("compute ms", lambda r: 1e3 * r["compute_s"], "{:.1f}"),
    ("codec ms", lambda r: 1e3 * r["codec_s"], "{:.2f}"),
    ("comm ms", lambda r: None if r["comm_wait_s"] is None else 1e3 * r["comm_wait_s"], "{:.2f}"),
    ("extra ms", lambda r: None if r["codec_extra_s"] is None else 1e3 * r["codec_extra_s"], "{:.2f}"),
    ("extra/compute", lambda r: fraction(r["codec_extra_s"], r["compute_s"]), "{:.2%}"),
    ("comm/step", lambda r: fraction(r["comm_wait_s"], r["step_s"]), "{:.2%}"),
    ("KiB/step", lambda r: r["bytes_per_step"] / 1024, "{:,.1f}"),
    ("×local", lambda r: r["ratio_to_local"], "{:.3f}"),
]


def format_table(header: list[str], cells: list[list[str]]) -> str:
    """A Markdown table (numbers right-aligned)."""
    widths = [max(len(h), *(len(row[k]) for row in cells)) for k, h in enumerate(header)]
    def line(values: list[str]) -> str:
        return "| " + " | ".join(v.rjust(w) for v, w in zip(values, widths)) + " |"
    rule = "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in cells)])


def format_cell(value: Any, pattern: str) -> str:
    return "—" if value is None else pattern.format(value)


def step_table(rows: list[dict[str, Any]]) -> str:
    cells = [[format_cell(get(r), pattern) for _, get, pattern in TABLE_COLUMNS] for r in rows]
    return format_table([name for name, _, _ in TABLE_COLUMNS], cells)


# --------------------------------------------------------------------------------------------
# Targets of issue 8
# --------------------------------------------------------------------------------------------

def find_row(rows: list[dict[str, Any]], model: str, label: str, processes: int,
             workers: Optional[int] = None) -> Optional[dict[str, Any]]:
    """The row of ``label`` on ``model`` and ``processes``: on the smallest ring measured, or on
    ``workers`` workers."""
    matching = [r for r in rows if (r["model"], r["algorithm"], r["processes"]) == (model, label, processes)
                and workers in (None, r["run_workers"])]
    return min(matching, key=lambda r: r["run_workers"], default=None)


def each_repetition(row: Optional[dict[str, Any]], other: Optional[dict[str, Any]],
                    value: Callable[[dict[str, Any], dict[str, Any]], Optional[float]]) -> Optional[list[float]]:
    """``value(repetition of row, repetition of other)`` for every repetition r of two rows of one job
    (measured seconds apart, within repetition r); None when a row or a value is missing."""
    if row is None or other is None:
        return None
    values = [value(mine, theirs) for mine, theirs in zip(row["repetitions"], other["repetitions"])]
    return None if not values or None in values else values


def target_lines(rows: list[dict[str, Any]]) -> list[list[str]]:
    """``[target, measured, range, verdict]`` for every step-time target of issue 8. Each target is
    computed per repetition from rows of the same job, so that a change of the machine's speed
    between repetitions cancels; ``measured`` is the median over the repetitions, ``range`` their
    lowest and highest, and the verdict follows the median (``pending`` when a row it needs was not
    measured)."""
    def check(text: str, values: Optional[list[float]], limit: Optional[float], shown: str = "{:.2%}") -> list[str]:
        if values is None:
            return [text, "—", "—", "pending"]
        middle = statistics.median(values)
        verdict = "reported" if limit is None else "met" if middle <= limit else "missed"
        return [text, shown.format(middle), f"{shown.format(min(values))}–{shown.format(max(values))}", verdict]

    def codec_share(model: str, label: str) -> Optional[list[float]]:
        """The method's own work (its codec time less local SGD's, per worker) over its forward/backward."""
        row = find_row(rows, model, label, 1)
        local = None if row is None else find_row(rows, model, REFERENCE_LABEL, 1, row["run_workers"])
        return each_repetition(row, local, lambda mine, ref: fraction(
            codec_beyond_local(mine["codec_s"], row, ref["codec_s"], local), mine["compute_s"]))

    def comm_share(label: str, model: str, key: str = "comm_wait_s") -> Optional[list[float]]:
        row = find_row(rows, model, label, 2)
        return each_repetition(row, row, lambda mine, _: fraction(mine[key], mine["step_s"]))

    def versus_ddp(model: str, processes: int, per_compute: bool = False) -> Optional[list[float]]:
        """PowerGossip s=1's step per worker over DDP+powerSGD's; ``per_compute``: each step over
        its own forward/backward first, which cancels a change of machine speed between the two
        measurements (the same model's forward/backward costs the same in both)."""
        gossip, ddp = find_row(rows, model, "powergossip-1", processes), find_row(rows, model, DDP_LABEL, processes)
        if per_compute:
            return each_repetition(gossip, ddp, lambda mine, theirs: fraction(
                fraction(mine["step_s"], mine["compute_s"]), fraction(theirs["step_s"], theirs["compute_s"])))
        return each_repetition(gossip, ddp, lambda mine, theirs: fraction(
            mine["step_s"] / gossip["workers_per_process"], theirs["step_s"]))

    def scaling(model: str, label: str, workers: int) -> Optional[list[float]]:
        small, large = find_row(rows, model, label, 1), find_row(rows, model, label, 1, workers)
        return each_repetition(large, small, lambda mine, theirs: fraction(
            mine["step_s"] / large["workers_per_process"], theirs["step_s"] / small["workers_per_process"]))

    lines = [check("PowerGossip s=1 codec (extra) ≤ 1 % of LSTM forward/backward (P=1)",
                   codec_share("lstm", "powergossip-1"), 0.01),
             check("PowerGossip s=8 codec (extra) ≤ 5 % of LSTM forward/backward (P=1)",
                   codec_share("lstm", "powergossip-8"), 0.05),
             check("PowerGossip s=1 codec (extra) ≤ 10 % of ResNet-20 forward/backward (P=1)",
                   codec_share("resnet20", "powergossip-1"), 0.10)]
    for model in sorted({r["model"] for r in rows}):
        for label in ("powergossip-1", "powergossip-8"):
            lines.append(check(f"{model} {label}: comm wait ≤ 5 % of the step (P=2)", comm_share(label, model), 0.05))
            lines.append(check(f"{model} {label}: the same, least-waiting process (communication alone)",
                               comm_share(label, model, "comm_wait_least_s"), 0.05))
        lines.append(check(f"{model} dpsgd: comm wait share of the step (P=2, as overlap allows)",
                           comm_share("dpsgd", model), None))
        for processes in sorted({r["processes"] for r in rows}):
            lines.append(check(f"{model} P={processes}: PowerGossip s=1 step per worker ≤ DDP+powerSGD step",
                               versus_ddp(model, processes), 1.0, "{:.2f}×"))
            lines.append(check(f"{model} P={processes}: the same, each step over its own forward/backward",
                               versus_ddp(model, processes, per_compute=True), 1.0, "{:.2f}×"))
    smallest = min((r["run_workers"] for r in rows), default=0)
    for model, label, workers in sorted({(r["model"], r["algorithm"], r["run_workers"]) for r in rows
                                         if r["processes"] == 1 and r["run_workers"] > smallest}):
        lines.append(check(f"{model} {label}: step per worker at n={workers} ≤ {SCALING_LIMIT}× n={smallest} (P=1)",
                           scaling(model, label, workers), SCALING_LIMIT, "{:.2f}×"))
    return lines


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def parse_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: lstm, resnet20, mlp")
    parser.add_argument("--algorithms", default=",".join([*ALGORITHM_CONFIGS, DDP_LABEL]),
                        help="comma-separated labels (default: all)")
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts P")
    parser.add_argument("--workers", type=int, default=4, help="workers n on the ring (n = P when P > n)")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions R; the median is reported")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per repetition (default 3, quick 1)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps at the start of every repetition")
    parser.add_argument("--quick", action="store_true", help="narrower models (same batch shapes): under 10 min on 2 cores")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="cuda when present (auto)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process on CPU (default: cores / P)")
    parser.add_argument("--scale-to", type=int, default=32,
                        help="also time " + ", ".join(SCALING_LABELS) + " with this many workers in one process (0: skip)")
    parser.add_argument("--scale-model", default="mlp", help="the model of the scaling rows")
    parser.add_argument("--mlp", default="784,1024,1024,10", help="MLP layer widths, input first")
    parser.add_argument("--mlp-batch", type=int, default=128, help="MLP batch size per worker")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per model and process count")
    parser.add_argument("--json", type=Path, default=None, help="write the rows as a JSON list here")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace, processes: int, workers: Optional[int] = None) -> Settings:
    steps = args.steps if args.steps is not None else (1 if args.quick else 3)
    return Settings(quick=args.quick, workers=max(workers or args.workers, processes), warmup=args.warmup, steps=steps,
                    repeats=args.repeats, device=args.device, threads=args.threads, mlp_sizes=tuple(int(w) for w in parse_list(args.mlp)),
                    mlp_batch=args.mlp_batch)


def runnable(requested: list[str], missing: dict[str, str], kind: str) -> list[str]:
    """``requested`` without the ``missing`` ones, each of which is reported in one line."""
    for name, why in missing.items():
        print(f"skipping {kind} {name}: {why}", flush=True)
    return [name for name in requested if name not in missing]


def measure_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every model × process count × algorithm, in that nesting, then the scaling rows (``--scale-to``
    workers in one process); the rows with their ratios."""
    models = runnable(parse_list(args.models), unavailable_models(parse_list(args.models)), "model")
    labels = runnable(parse_list(args.algorithms), unavailable_algorithms(parse_list(args.algorithms)), "algorithm")
    jobs = [Job(model, int(processes), tuple(labels), settings_from(args, int(processes)))
            for model in models for processes in parse_list(args.processes)]
    scaling_labels = tuple(label for label in labels if label in SCALING_LABELS)
    if args.scale_to > args.workers and args.scale_model in models and scaling_labels:
        # the scaling rows ride in the model's one-process job (added if --processes lacks 1)
        base = next((job for job in jobs if (job.model, job.processes) == (args.scale_model, 1)), None)
        scaled = Job(args.scale_model, 1, base.labels if base else scaling_labels, settings_from(args, 1),
                     scale_to=args.scale_to, scaled=scaling_labels)
        jobs = [scaled if job is base else job for job in jobs] if base else [*jobs, scaled]
    rows = []
    for job in jobs:
        model, processes = job.model, job.processes
        if job.settings.workers % processes:
            print(f"skipping {model} P={processes}: {job.settings.workers} workers do not split over "
                  f"{processes} processes", flush=True)
            continue
        also = f" (and {job.scale_to} for {', '.join(job.scaled)})" if job.scaled else ""
        print(f"{model} on {processes} process(es), n = {job.settings.workers}{also}: "
              f"{WORKLOADS[model](job.settings).description}", flush=True)
        try:
            per_rank = spawn_job(job, args.timeout)
        except RuntimeError as exc:
            print(f"skipping {model} P={processes}: {exc}", flush=True)
            continue
        rings = sorted({n for label in job.labels for n in job.rings(label)})
        rows += [make_row(job, label, ring, [results[(label, ring)] for results in per_rank])
                 for ring in rings for label in job.labels if ring in job.rings(label)]
    add_ratios(rows)
    return rows


def exit_on_signal(signum: int, frame: Any) -> None:
    """Turn SIGTERM into SystemExit, so that the measuring processes are stopped on the way out."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, exit_on_signal)
    warn_if_busy()
    start = time.perf_counter()
    rows = measure_all(args)
    print()
    print(step_table(rows) if rows else "no rows measured")
    print()
    print(format_table(["target", "measured", "range", "verdict"], target_lines(rows)))
    print(f"\n{len(rows)} rows in {time.perf_counter() - start:.0f} s; torch {torch.__version__}, "
          f"{cpu_description()}, device {pick_device(args.device).type}")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
