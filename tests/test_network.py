"""The worker network: placement, in-memory and point-to-point rounds, byte counting."""

from __future__ import annotations

import sys

import pytest
import torch

from gossip.comm.messages import Network, NetworkError
from gossip.comm.spawn import spawn


def ring_round(network: Network, pipelined: bool = False) -> dict:
    """Every worker sends ``src+dst+1`` values ``100*src+dst`` to both ring neighbours, in one posted
    round or pipelined (each worker's messages posted as made, each inbox handed out when complete)."""
    n = network.n

    def messages_of(i: int) -> dict:
        return {(i, j): torch.full((i + j + 1,), 100.0 * i + j) for j in sorted({(i - 1) % n, (i + 1) % n} - {i})}

    expected = {(j, i): (i + j + 1, torch.float32) for i in network.local_workers for (_, j) in messages_of(i)}
    if pipelined:
        inbox, handed = {}, []
        for worker, received in network.pipelined(messages_of, expected):
            assert all(dst == worker for _, dst in received)  # each worker gets its own messages only
            handed.append(worker)
            inbox.update(received)
        assert sorted(handed) == list(network.local_workers)
    else:
        inbox = network.start({pair: m for i in network.local_workers for pair, m in messages_of(i).items()},
                              expected).wait()
    return {pair: tensor.tolist() for pair, tensor in inbox.items()}, list(network.bytes_sent)


def check_ring(inbox: dict, local: range, n: int) -> None:
    for i in local:
        for j in sorted({(i - 1) % n, (i + 1) % n} - {i}):
            assert inbox[(j, i)] == [100.0 * j + i] * (i + j + 1)


def test_one_process_round_hands_over_in_memory_and_counts_bytes():
    network = Network(5)
    message = torch.arange(3.0)
    inbox = network.exchange({(0, 1): message}, {(0, 1): (3, torch.float32)})
    assert inbox[(0, 1)] is message
    assert network.bytes_sent == [12, 0, 0, 0, 0]
    inbox, sent = ring_round(Network(5))
    check_ring(inbox, range(5), 5)
    assert sent == [4 * (2 * i + 2 + ((i - 1) % 5) + ((i + 1) % 5)) for i in range(5)]


def _ring_worker(rank: int, world_size: int, n: int):
    network = Network(n, rank, world_size)
    rounds = {}
    for pipelined in (False, True):
        inbox, sent = ring_round(network, pipelined)
        check_ring(inbox, network.local_workers, n)
        rounds[pipelined] = sent
    values = network.gather_per_worker([float(w) for w in network.local_workers])
    mean = network.mean_over_workers([torch.full((2,), float(w)) for w in network.local_workers])
    return rounds, values.tolist(), mean.tolist()


def test_three_processes_two_workers_each_match_one_process():
    """The middle process has neighbours in both others; one job runs a plain and a pipelined round
    (bytes accumulate over both)."""
    n = 6
    results = spawn(_ring_worker, 3, n, timeout=90)
    single = Network(n)
    expected = {}
    for pipelined in (False, True):
        inbox_single, sent_single = ring_round(single, pipelined)
        check_ring(inbox_single, range(n), n)
        expected[pipelined] = sent_single
    for rank, (rounds, values, mean) in enumerate(results):
        local = range(2 * rank, 2 * rank + 2)
        for pipelined in (False, True):
            assert [rounds[pipelined][i] for i in local] == [expected[pipelined][i] for i in local]
        assert values == [float(i) for i in range(n)]
        assert mean == [2.5, 2.5]  # the mean of worker ids 0..5


def test_placement_errors():
    with pytest.raises(NetworkError, match="cannot be split evenly over 4 processes"):
        Network(6, rank=0, world_size=4)
    network = Network(4, rank=0, world_size=2)
    with pytest.raises(NetworkError, match="worker 3 is not hosted by process 0"):
        network.start({(3, 0): torch.zeros(1)}, {})
    with pytest.raises(NetworkError, match="1-D"):
        network.start({(0, 1): torch.zeros(2, 2)}, {})


def test_the_lost_process_is_the_one_whose_heartbeat_stopped_however_late_the_others_beat():
    """Rank 1 beats once, 12 intervals after the question (a busy process; the old window was 4
    intervals), rank 2 never: only rank 2 is lost, and a later question reads the same verdict."""
    import threading

    import torch.distributed as dist

    from gossip.comm.distributed import Heartbeat

    store = dist.HashStore()
    heartbeat = Heartbeat(store, 0, interval=0.05)
    late = threading.Timer(12 * 0.05, lambda: store.add("gossip/heartbeat/1", 1))
    late.start()
    try:
        assert heartbeat.lost([1, 2]) == [2]
        assert heartbeat.lost([1]) == [2]  # the recorded verdict, not a new one
    finally:
        late.cancel()
        heartbeat.stop()
    fresh = dist.HashStore()
    alive = [Heartbeat(fresh, r, interval=0.05) for r in range(3)]
    try:
        assert alive[0].lost([1, 2]) == []  # everyone beats: no verdict, and no full window's wait
    finally:
        for h in alive:
            h.stop()


def _gloo_threads_after_destroy(rank: int, world_size: int) -> list[str]:
    """A script's order: the process group first, then its first torch optimizer (which imports
    torch.distributed.nn), then destroy_process_group; the gloo worker threads left over."""
    import os

    import torch.distributed as dist

    assert dist.is_initialized()
    torch.optim.SGD(torch.nn.Linear(3, 1).parameters(), lr=0.1)
    dist.destroy_process_group()
    names = [open(f"/proc/self/task/{task}/comm").read().strip() for task in os.listdir("/proc/self/task")]
    return [name for name in names if name.startswith("pt_gloo")]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads thread names from /proc")
def test_destroy_process_group_ends_gloos_worker_threads():
    """A group kept alive past destroy_process_group leaves gloo's worker threads running into the
    interpreter's exit, where one can abort the process. Importing gossip binds torch's default
    arguments before any group exists, so that the group goes when it is destroyed."""
    assert spawn(_gloo_threads_after_destroy, 2, timeout=90) == [[], []]
