"""Where the workers live and how one round of messages moves between them.

A run has ``n`` workers spread over the ``P`` processes of the job in contiguous blocks: process
``r`` hosts workers ``r*n/P .. (r+1)*n/P - 1``. A round takes an outbox ``{(src, dst): 1-D
tensor}`` from the local senders and returns an inbox ``{(src, dst): tensor}`` for the local
receivers. Pairs inside a process are handed over in memory; pairs across processes travel with
``torch.distributed`` point-to-point operations, posted in the order ``(src, dst)`` sorts to, which
both sides derive identically. Receivers size their buffers from what they already know (the
``expected`` shapes), so a round needs no size handshake. Every byte a worker sends is counted,
in-memory pairs included: they would cross a wire in a real deployment.

Two optional attachments: ``faults`` (:class:`~gossip.comm.faults.LinkFaults`), which the algorithms
ask which edges are down in a round, and ``traffic`` (:class:`~gossip.comm.simclock.TrafficLog`),
which records the bytes of every pair of every round (and of collectives) for the simulated clock.
"""

from __future__ import annotations

import datetime
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
import torch.distributed as dist
# torch.distributed.nn.functional writes the default process group into its functions' default
# arguments when it is first imported, which torch.optim does on its first optimizer. Imported
# after init_process_group, it keeps the group and gloo's worker threads alive past
# destroy_process_group, and one of those threads can then abort the interpreter's exit
# ("terminate called without an active exception"). Imported here, before any group exists, it
# holds None.
import torch.distributed.nn.functional  # noqa: F401

if TYPE_CHECKING:
    from gossip.comm.faults import LinkFaults
    from gossip.comm.simclock import TrafficLog

Pair = tuple[int, int]
Spec = tuple[int, torch.dtype]


class NetworkError(ValueError):
    """A placement or message that the network cannot serve."""


class PeerLostError(RuntimeError):
    """A round did not complete: a process it talks to died or stopped answering."""


@dataclass
class PendingRound:
    """A round in flight: :meth:`wait` blocks until every message has arrived."""

    network: "Network"
    inbox: dict[Pair, torch.Tensor]
    works: list = field(default_factory=list)
    peers: list[int] = field(default_factory=list)

    def ready(self) -> bool:
        """Whether every message of the round has arrived (never blocks)."""
        return all(work.is_completed() for work in self.works)

    def wait(self) -> dict[Pair, torch.Tensor]:
        start = time.perf_counter()
        try:
            for work in self.works:
                work.wait(self.network.timeout)
        except RuntimeError as exc:
            raise PeerLostError(self.network.describe_lost(self.peers, exc)) from None
        self.works = []
        self.network.comm_wait_s += time.perf_counter() - start
        return self.inbox


class Network:
    """The workers of one process and the message rounds between all workers of the job."""

    def __init__(self, workers: int, rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu", timeout_s: float = 600.0, heartbeat: Any = None) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise NetworkError(f"rank {rank} is not in a job of {world_size} processes")
        if workers % world_size:
            raise NetworkError(f"workers = {workers} cannot be split evenly over {world_size} processes; "
                               f"use a number of processes that divides {workers}")
        self.n = workers
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(device)
        self.per_process = workers // world_size
        self.local_workers = range(rank * self.per_process, (rank + 1) * self.per_process)
        self.bytes_sent = [0] * workers
        self.comm_wait_s = 0.0
        self.timeout = datetime.timedelta(seconds=timeout_s)
        self.heartbeat = heartbeat
        self.faults: LinkFaults | None = None
        self.traffic: TrafficLog | None = None

    def owner(self, worker: int) -> int:
        """The rank of the process that hosts ``worker``."""
        return worker // self.per_process

    def is_local(self, worker: int) -> bool:
        return worker in self.local_workers

    # --- gossip rounds ------------------------------------------------------------------------

    def start(self, outbox: dict[Pair, torch.Tensor], expected: dict[Pair, Spec]) -> PendingRound:
        """Post one round: send ``outbox``, receive the pairs named in ``expected``.

        ``outbox`` holds every message sent by a local worker; ``expected`` names, for every
        message a local worker receives, its element count and dtype. Returns at once; the
        round's inbox is ready after :meth:`PendingRound.wait`.
        """
        self._record(outbox)
        return self._post(outbox, expected)

    def _record(self, outbox: dict[Pair, torch.Tensor]) -> None:
        if self.traffic is not None:
            self.traffic.round({pair: m.numel() * m.element_size() for pair, m in outbox.items()})

    def _post(self, outbox: dict[Pair, torch.Tensor], expected: dict[Pair, Spec]) -> PendingRound:
        """:meth:`start` without recording the round (a part of a round of :meth:`pipelined`)."""
        inbox: dict[Pair, torch.Tensor] = {}
        ops: list[dist.P2POp] = []
        for (src, dst), message in sorted(outbox.items()):
            if not self.is_local(src):
                raise NetworkError(f"worker {src} is not hosted by process {self.rank}")
            if message.dim() != 1:
                raise NetworkError(f"message {src}->{dst} must be a 1-D tensor, got shape {tuple(message.shape)}")
            self.bytes_sent[src] += message.numel() * message.element_size()
            if self.is_local(dst):
                inbox[(src, dst)] = message
            else:
                ops.append(dist.P2POp(dist.isend, message.contiguous(), self.owner(dst), tag=self._tag(src, dst)))
        for (src, dst), (numel, dtype) in sorted(expected.items()):
            if not self.is_local(dst):
                raise NetworkError(f"worker {dst} is not hosted by process {self.rank}")
            if self.is_local(src):
                if (src, dst) not in inbox:
                    raise NetworkError(f"expected a message {src}->{dst} but the outbox has none")
                continue
            buffer = torch.empty(numel, dtype=dtype, device=self.device)
            inbox[(src, dst)] = buffer
            ops.append(dist.P2POp(dist.irecv, buffer, self.owner(src), tag=self._tag(src, dst)))
        peers = sorted({op.peer for op in ops})
        try:
            works = dist.batch_isend_irecv(ops) if ops else []
        except RuntimeError as exc:
            raise PeerLostError(self.describe_lost(peers, exc)) from None
        return PendingRound(self, inbox, list(works), peers)

    def exchange(self, outbox: dict[Pair, torch.Tensor], expected: dict[Pair, Spec]) -> dict[Pair, torch.Tensor]:
        """One synchronous round: :meth:`start` and wait."""
        return self.start(outbox, expected).wait()

    def pipelined(self, messages_of: Callable[[int], dict[Pair, torch.Tensor]],
                  expected: dict[Pair, Spec]) -> Iterator[tuple[int, dict[Pair, torch.Tensor]]]:
        """One round that overlaps making and using messages with their flight.

        ``messages_of(worker)`` makes a local worker's outbox; it is posted at once, before the
        next worker's is made. Then ``(worker, inbox)`` is yielded for every local worker as soon as
        the messages it receives are complete, whichever worker that is (the inbox also holds the
        local pairs). The caller must make every message before it changes any state that another
        message depends on: all ``messages_of`` calls happen before the first yield. A backend
        that matches messages by order rather than by tag (NCCL) gets the whole round posted at
        once, in the sorted order that both sides derive."""
        workers = list(self.local_workers)
        if self.world_size > 1 and dist.get_backend() == "nccl":
            outbox = {pair: message for worker in workers for pair, message in messages_of(worker).items()}
            inbox = self.exchange(outbox, expected)
            yield from ((worker, {pair: m for pair, m in inbox.items() if pair[1] == worker}) for worker in workers)
            return
        local: dict[Pair, torch.Tensor] = {}
        rounds: dict[int, PendingRound] = {}
        posted: dict[Pair, torch.Tensor] = {}
        for worker in workers:
            outbox = messages_of(worker)
            posted.update(outbox)
            remote = {(src, dst): spec for (src, dst), spec in expected.items() if dst == worker and not self.is_local(src)}
            rounds[worker] = self._post(outbox, remote)
            local.update((pair, message) for pair, message in rounds[worker].inbox.items() if self.is_local(pair[0]))
        self._record(posted)
        while rounds:
            worker = next((w for w, pending in rounds.items() if pending.ready()), next(iter(rounds)))
            received = {**local, **rounds.pop(worker).wait()}
            yield worker, {pair: message for pair, message in received.items() if pair[1] == worker}

    def count_bytes(self, worker: int, nbytes: int) -> None:
        """Count bytes that a collective (not a point-to-point round) sends on behalf of ``worker``."""
        self.bytes_sent[worker] += int(nbytes)
        if self.traffic is not None:
            self.traffic.collective(worker, int(nbytes))

    def workers_of(self, rank: int) -> range:
        return range(rank * self.per_process, (rank + 1) * self.per_process)

    def describe_lost(self, peers: list[int] | None, exc: BaseException) -> str:
        """One line naming the lost processes and their workers: those whose heartbeat stopped
        (a hang anywhere stalls everyone), else the round's ``peers`` (default: all others)."""
        others = [r for r in range(self.world_size) if r != self.rank]
        lost = self.heartbeat.lost(others) if self.heartbeat is not None else []
        names = ", ".join(f"process {r} ({self._workers_text(r)})" for r in lost or peers or others)
        reason = re.sub(r"\[[^\]]*\]:?\s*", "", " ".join(str(exc).split())).split(". ")[0]
        return f"lost contact with {names} (timeout {self.timeout.total_seconds():g} s: {reason})"

    def _workers_text(self, rank: int) -> str:
        block = self.workers_of(rank)
        return f"worker {block.start}" if len(block) == 1 else f"workers {block.start}-{block.stop - 1}"

    def _tag(self, src: int, dst: int) -> int:
        return src * self.n + dst

    # --- collectives over all workers -----------------------------------------------------------

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the processes, in place (a no-op with one process)."""
        if self.world_size > 1:
            start = time.perf_counter()
            self._collective(dist.all_reduce, tensor)
            self.comm_wait_s += time.perf_counter() - start
        return tensor

    def all_gather_object(self, value: Any) -> list[Any]:
        """Every process's ``value``, by rank."""
        gathered: list[Any] = [None] * self.world_size
        if self.world_size == 1:
            return [value]
        self._collective(dist.all_gather_object, gathered, value)
        return gathered

    def _collective(self, operation: Any, *args: Any) -> None:
        """Run a collective; a peer that died or hangs becomes a :class:`PeerLostError`."""
        try:
            operation(*args)
        except RuntimeError as exc:
            raise PeerLostError(self.describe_lost(None, exc)) from None

    def gather_per_worker(self, values: list[float] | torch.Tensor) -> torch.Tensor:
        """One float64 value per local worker in, the values of all ``n`` workers out (in order)."""
        full = torch.zeros(self.n, dtype=torch.float64, device=self.device)
        full[self.local_workers.start:self.local_workers.stop] = torch.as_tensor(
            values, dtype=torch.float64, device=self.device)
        return self.all_reduce_sum(full).cpu()

    def mean_over_workers(self, local_tensors: list[torch.Tensor]) -> torch.Tensor:
        """The mean over all workers of a tensor that each local worker holds."""
        total = torch.stack(local_tensors).sum(0) if len(local_tensors) > 1 else local_tensors[0].clone()
        return self.all_reduce_sum(total).div_(self.n)

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()
