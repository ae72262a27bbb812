"""The worker network: placement, in-memory and point-to-point rounds, byte counting."""

from __future__ import annotations

import pytest
import torch

from gossip.network import Network, NetworkError

from conftest import spawn


def ring_round(network: Network) -> dict:
    """Every worker sends ``src+dst+1`` values ``100*src+dst`` to both ring neighbours."""
    n = network.n
    outbox, expected = {}, {}
    for i in network.local_workers:
        for j in sorted({(i - 1) % n, (i + 1) % n} - {i}):
            outbox[(i, j)] = torch.full((i + j + 1,), 100.0 * i + j)
            expected[(j, i)] = (i + j + 1, torch.float32)
    pending = network.start(outbox, expected)
    inbox = pending.wait()
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
    inbox, sent = ring_round(network)
    check_ring(inbox, network.local_workers, n)
    values = network.gather_per_worker([float(w) for w in network.local_workers])
    mean = network.mean_over_workers([torch.full((2,), float(w)) for w in network.local_workers])
    return sent, values.tolist(), mean.tolist()


def test_three_processes_two_workers_each_match_one_process():
    n = 6
    results = spawn(_ring_worker, 3, n, timeout=90)
    _, sent_single = ring_round(Network(n))
    for rank, (sent, values, mean) in enumerate(results):
        local = range(2 * rank, 2 * rank + 2)
        assert [sent[i] for i in local] == [sent_single[i] for i in local]
        assert values == [float(i) for i in range(n)]
        assert mean == [2.5, 2.5]


def test_placement_errors():
    with pytest.raises(NetworkError, match="cannot be split evenly over 4 processes"):
        Network(6, rank=0, world_size=4)
    network = Network(4, rank=0, world_size=2)
    with pytest.raises(NetworkError, match="worker 3 is not hosted by process 0"):
        network.start({(3, 0): torch.zeros(1)}, {})
    with pytest.raises(NetworkError, match="1-D"):
        network.start({(0, 1): torch.zeros(2, 2)}, {})
