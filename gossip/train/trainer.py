"""The training loop: every step the local workers draw their batches, the algorithm runs its
gossip round(s) and gradient step, the learning rate follows its schedule; every ``eval_every``
steps the run is measured and logged to ``RUN_DIR/metrics.jsonl``; every ``checkpoint_every``
steps, every ``checkpoint_every_s`` seconds, at the end and when asked to stop, every worker's
complete state is saved (copied, then written in the background). With a
``network`` section the steps are also replayed on the simulated clock (:mod:`gossip.comm.simclock`):
after every step in one process, with several whenever the run is measured or saved (the
processes' records of their workers' messages are gathered then); every record gains
``sim_time_s``."""

from __future__ import annotations

import copy
import json
import math
import signal
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from gossip.train import checkpoint
from gossip.algorithms import ALGORITHMS, Algorithm
from gossip.config import Config
from gossip.comm.faults import LinkFaults
from gossip.comm.messages import Network
from gossip.algorithms.optim import LRSchedule
from gossip.comm.seeding import seed_for
from gossip.comm.simclock import SimClock, TrafficLog, merge
from gossip.tasks import TASKS, Task
from gossip.algorithms.worker import Worker


STOP_POLL = 10


class NonFiniteError(RuntimeError):
    """A worker's training loss stopped being finite."""


class Trainer:
    """Runs one config for the workers that ``network`` places on this process."""

    def __init__(self, config: Config, network: Network, run_dir: Path | None = None,
                 progress: bool = True) -> None:
        self.config = config
        self.network = network
        self.run_dir = run_dir
        self.progress = progress and network.rank == 0
        self.task: Task = TASKS.implementation(config.task.name)(
            config.task, config.workers, config.seed, config.train.batch_size)
        self.topology_schedule = config.topology.build(config.workers, config.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed_for(config.seed, "init"))
            initial_model = self.task.build_model()
        self.workers = [Worker(i, copy.deepcopy(initial_model), config.optimizer, config.seed, network.device)
                        for i in network.local_workers]
        self.streams = {i: self.task.stream(i) for i in network.local_workers}
        self.eval_model = copy.deepcopy(initial_model).to(network.device)
        if config.faults.link_drop > 0:
            network.faults = LinkFaults(config.faults.link_drop, config.seed)
        self.clock = SimClock(config.network, config.workers) if config.network is not None else None
        if self.clock is not None:
            network.traffic = TrafficLog()
        self.algorithm: Algorithm = ALGORITHMS.implementation(config.algorithm.name)(
            self.topology_schedule, network, self.workers, options=config.algorithm, seed=config.seed)
        self.steps_per_epoch = self.task.steps_per_epoch()
        train = config.train
        self.total_steps = train.steps if train.steps is not None else math.ceil(train.epochs * self.steps_per_epoch)
        self.lr_schedule = LRSchedule(config.lr_schedule, config.optimizer.lr, self.steps_per_epoch, self.total_steps)
        self.step = 0
        self.loss_sum = torch.zeros(len(self.workers), dtype=torch.float64, device=network.device)
        self.loss_count = 0
        self.time = {"compute": 0.0, "codec": 0.0, "comm": 0.0}
        self.history: list[dict[str, Any]] = []  # every record measured so far (for library use)
        self.stop_signal = 0  # set (to the signal's number) to stop after the current step
        self.saved_step: int | None = None
        self.writer: checkpoint.Writer | None = None
        self.checkpoint_clock = time.monotonic()  # when the last checkpoint was taken (wall time)
        # Reading the losses syncs with the device: every step on CPU, every STOP_POLL on a GPU.
        self.finite_check_every = 1 if network.device.type == "cpu" else STOP_POLL

    # --- one step -------------------------------------------------------------------------

    def compute_gradients(self) -> None:
        """Forward and backward for every local worker on its next batch, at its current params
        (timed as compute, with the local optimizer steps; codec time is the rest of a step that
        is not spent waiting for messages)."""
        start = time.perf_counter()
        seconds: dict[int, float] = {}
        sync = self.clock is not None and self.clock.compute is None and self.network.device.type == "cuda"
        for k, w in enumerate(self.workers):
            began = time.perf_counter()
            w.grads.zero_()
            batch = tuple(t.to(w.device, non_blocking=True) for t in self.streams[w.id].next())
            with w.forked_rng():
                loss = self.task.loss(w.model, batch, w.memory)
                loss.backward()
            self.loss_sum[k] += loss.detach()
            if sync:  # the measured compute of the simulated clock needs the kernels done
                torch.cuda.synchronize(w.device)
            seconds[w.id] = time.perf_counter() - began
        self.loss_count += 1
        if self.network.traffic is not None:
            self.network.traffic.compute(seconds)
        self.time["compute"] += time.perf_counter() - start

    def train_step(self) -> None:
        lr = self.learning_rate()
        start, compute0 = time.perf_counter(), self.time["compute"]
        comm0, optimizer0 = self.network.comm_wait_s, self.algorithm.optimizer_s
        self.algorithm.step(self.step, lr, self.compute_gradients)
        if self.network.traffic is not None:
            self.network.traffic.end_step()
            if self.network.world_size == 1:  # nothing to gather: replay at once, keep no log
                self.advance_clock()
        comm = self.network.comm_wait_s - comm0
        self.time["compute"] += self.algorithm.optimizer_s - optimizer0
        self.time["comm"] += comm
        self.time["codec"] += time.perf_counter() - start - (self.time["compute"] - compute0) - comm
        self.step += 1
        self.lr_schedule.advance()

    def learning_rate(self) -> float:
        """This step's learning rate, from the run's ``lr_schedule``."""
        return self.lr_schedule.lr

    # --- the loop ------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Train to ``total_steps`` (or until a process is asked to stop: :attr:`stop_signal`),
        measuring every ``eval_every`` steps and saving every ``checkpoint_every`` steps, every
        ``checkpoint_every_s`` seconds and at the end; returns the last record. On return the last
        checkpoint is complete."""
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not self.progress,
                   desc=f"{self.config.algorithm.name} n={self.config.workers}", unit="step", dynamic_ncols=True)
        record: dict[str, Any] = {}
        train = self.config.train
        self.checkpoint_clock = time.monotonic()
        with bar:
            while self.step < self.total_steps:
                stop, checkpoint_due = self._poll()
                if stop:
                    self.stop_signal = stop
                    break
                if checkpoint_due and self.step and self.saved_step != self.step:
                    self.save_checkpoint()
                self.train_step()
                if self.step % self.finite_check_every == 0:
                    self._check_finite()
                bar.update(1)
                on_grid = self.step % train.eval_every == 0
                if on_grid or self.step == self.total_steps:
                    record = self.measure(restart_window=on_grid)
                    self.log(record)
                    bar.set_postfix(self._short(record))
                if train.checkpoint_every and self.step % train.checkpoint_every == 0:
                    self.save_checkpoint()
        if self.saved_step != self.step:
            self.save_checkpoint()
        self.wait_for_checkpoint()
        return record

    def _poll(self) -> tuple[int, bool]:
        """The signal that stops the run (0: none; SIGTERM before SIGINT) and whether a timed
        checkpoint is due, agreed across processes every ``STOP_POLL`` steps (every step in one)."""
        every_s = self.config.train.checkpoint_every_s
        due = bool(every_s) and time.monotonic() - self.checkpoint_clock >= every_s
        if self.network.world_size == 1:
            return self.stop_signal, due
        if self.step % STOP_POLL:
            return 0, False
        flags = torch.tensor([float(self.stop_signal == signal.SIGTERM), float(self.stop_signal == signal.SIGINT),
                              float(due)], device=self.network.device)
        terms, interrupts, due_anywhere = self.network.all_reduce_sum(flags).tolist()
        stop = signal.SIGTERM if terms else signal.SIGINT if interrupts else 0
        return int(stop), due_anywhere > 0

    def _check_finite(self) -> None:
        finite = torch.isfinite(self.loss_sum)
        if not bool(finite.all()):
            worker = self.workers[int((~finite).nonzero()[0])].id
            raise NonFiniteError(f"non-finite training loss on worker {worker} at step {self.step}")

    # --- checkpoints ------------------------------------------------------------------------

    def worker_checkpoint(self, k: int) -> dict[str, Any]:
        """Everything needed to continue worker ``k`` (local index) bit-exactly."""
        w = self.workers[k]
        return {"worker": w.state_dict(), "algorithm": self.algorithm.worker_state(w),
                "stream": self.streams[w.id].state_dict(), "memory": w.memory,
                "bytes_sent": self.network.bytes_sent[w.id], "loss_sum": self.loss_sum[k],
                "loss_count": self.loss_count, "step": self.step, "time": dict(self.time),
                "sim_finish_s": self.clock.finish[w.id] if self.clock is not None else 0.0,
                "lr_schedule": self.lr_schedule.state_dict()}

    def save_checkpoint(self) -> None:
        """Copy every local worker's state and write the checkpoint in the background (after the
        previous one is complete)."""
        if self.run_dir is None:
            return
        self.advance_clock()
        if self.writer is None:
            self.writer = checkpoint.Writer(self.run_dir, self.network.rank, self.network.n,
                                            keep=self.config.run.keep_checkpoints, timeout_s=self.config.run.timeout_s)
        self.writer.save(self.step, {w.id: self.worker_checkpoint(k) for k, w in enumerate(self.workers)})
        self.saved_step = self.step
        self.checkpoint_clock = time.monotonic()

    def wait_for_checkpoint(self, timeout: float | None = None) -> bool:
        """Wait until the checkpoint being written is complete; False if it still is not after ``timeout``."""
        return self.writer is None or self.writer.wait(timeout)

    def restore(self, directory: Path) -> None:
        """Continue from a verified checkpoint directory (any number of processes)."""
        finish: list[float] = []
        for k, w in enumerate(self.workers):
            state = checkpoint.load_worker(directory, w.id, self.network.device)
            w.load_state_dict(state["worker"])
            self.algorithm.load_worker_state(w, state["algorithm"])
            self.streams[w.id].load_state_dict(state["stream"])
            w.memory = state["memory"]
            self.network.bytes_sent[w.id] = state["bytes_sent"]
            self.loss_sum[k] = state["loss_sum"]
            self.loss_count, self.step, self.time = state["loss_count"], state["step"], state["time"]
            self.lr_schedule.load_state_dict(state["lr_schedule"])
            finish.append(state.get("sim_finish_s", 0.0))
        if self.clock is not None:
            self.clock.finish = self.network.gather_per_worker(finish).tolist()
        self.saved_step = self.step

    def measure(self, restart_window: bool = True) -> dict[str, Any]:
        """Everything that ``metrics.jsonl`` records (docs/concepts.md), over all workers of the job.

        ``train_loss`` averages the steps since the last record on the ``eval_every`` grid; a
        record off the grid (the last step of a run) leaves that window open, so a resumed run
        logs the same values as an uninterrupted one."""
        net = self.network
        self._check_finite()
        losses = net.gather_per_worker(self.loss_sum / max(1, self.loss_count))
        if restart_window:
            self.loss_sum.zero_()
            self.loss_count = 0
        mean_params = self.algorithm.averaged_params()
        consensus_distance = self.algorithm.consensus_distance(mean_params)
        sent = net.gather_per_worker([float(net.bytes_sent[w.id]) for w in self.workers])
        record: dict[str, Any] = {
            "step": self.step,
            "epoch": self.step / self.steps_per_epoch,
            "lr": self.learning_rate(),
            "train_loss": losses.mean().item(),
        }
        record.update({f"eval_{k}": v for k, v in self.evaluate_average(mean_params).items()})
        if self.config.train.local_eval:
            record.update(self.evaluate_locals())
        record.update({
            "consensus_distance": consensus_distance,
            "bytes_per_worker": sent.mean().item(),
            "time_compute_s": self.time["compute"],
            "time_codec_s": self.time["codec"],
            "time_comm_s": self.time["comm"],
        })
        if self.clock is not None:
            record["sim_time_s"] = self.advance_clock()
        self.history.append(record)
        return record

    def advance_clock(self) -> float:
        """Replay the steps since the last call on the simulated clock (with every process's
        record of its workers' messages) and return ``sim_time_s``; 0 without a ``network``."""
        if self.clock is None:
            return 0.0
        self.clock.run(merge(self.network.all_gather_object(self.network.traffic.take())))
        return self.clock.time

    def evaluate_average(self, mean_params: torch.Tensor) -> dict[str, float]:
        """The averaged model ``x̄`` (float buffers averaged too) on the held-out data."""
        buffers = [b for b in self.eval_model.buffers() if b.is_floating_point()]
        if buffers:
            for target, mean in zip(buffers, self._mean_buffers()):
                target.copy_(mean)
        torch.nn.utils.vector_to_parameters(mean_params, self.eval_model.parameters())
        self.eval_model.eval()
        return self.task.evaluate(self.eval_model)

    def _mean_buffers(self) -> list[torch.Tensor]:
        per_worker = [[b for b in w.model.buffers() if b.is_floating_point()] for w in self.workers]
        flat = self.network.mean_over_workers([torch.cat([b.reshape(-1) for b in bs]) for bs in per_worker])
        return list(flat.split([b.numel() for b in per_worker[0]]))

    def evaluate_locals(self) -> dict[str, float]:
        """Mean and std over the workers of each worker's own model's held-out metrics."""
        results = []
        for w in self.workers:
            w.model.eval()
            results.append(self.task.evaluate(w.model, full=False))
            w.model.train()
        record = {}
        for key in results[0]:
            values = self.network.gather_per_worker([r[key] for r in results])
            record[f"local_eval_{key}_mean"] = values.mean().item()
            record[f"local_eval_{key}_std"] = values.std(unbiased=False).item()
        return record

    def log(self, record: dict[str, Any]) -> None:
        if self.run_dir is not None and self.network.rank == 0:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def _short(self, record: dict[str, Any]) -> dict[str, str]:
        keys = ["train_loss", "eval_loss", f"eval_{self.task.metric}", "consensus_distance"]
        return {k.replace("eval_", "val_"): f"{record[k]:.4g}" for k in keys if k in record}
