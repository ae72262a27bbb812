"""Link failures: the draws both ends agree on, the mixing matrix with down edges, the average
kept exactly and consensus still reached, the bytes of down edges not counted, and the algorithms
that refuse the option."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import topologies
from gossip import config as config_module
from gossip.algorithms import ALGORITHMS
from gossip.config import OptimizerConfig
from gossip.comm.faults import LinkFaults
from gossip.comm.messages import Network
from gossip.registry import ConfigError
from gossip.comm.seeding import generator
from gossip.comm.simclock import TrafficLog
from gossip.algorithms.worker import Worker

N = 6


class Model(nn.Module):
    """A matrix (compressed by PowerGossip) and a vector (sent uncompressed)."""

    def __init__(self, start: torch.Tensor) -> None:
        super().__init__()
        self.matrix = nn.Parameter(start[:, :6].clone())
        self.vector = nn.Parameter(start[0].clone())


def gossip_setup(name: str, options: dict, link_drop: float, traffic: TrafficLog | None = None):
    network = Network(N)
    network.faults = LinkFaults(link_drop, seed=0) if link_drop else None
    network.traffic = traffic
    workers = [Worker(i, Model(torch.randn(8, 8, generator=generator(0, "start", i))), OptimizerConfig(lr=0.0), 0)
               for i in range(N)]
    algorithm_class = ALGORITHMS.entries[name]
    options_class = algorithm_class.Options
    algorithm = algorithm_class(topologies.ring(N), network, workers, options=options_class(name=name, **options))
    return network, workers, algorithm


def test_both_ends_draw_the_same_and_about_p_of_the_edges_are_down():
    faults = LinkFaults(0.3, seed=1)
    draws = [faults.down(t, r, i, (i + 1) % 16) for t in range(200) for r in range(3) for i in range(16)]
    assert draws == [faults.down(t, r, (i + 1) % 16, i) for t in range(200) for r in range(3) for i in range(16)]
    assert 0.27 < np.mean(draws) < 0.33
    assert draws != [LinkFaults(0.3, seed=2).down(t, r, i, (i + 1) % 16)
                     for t in range(200) for r in range(3) for i in range(16)]


def test_a_down_edge_moves_its_weight_onto_the_self_weights():
    ring = topologies.ring(8)
    faults = LinkFaults(0.5, seed=0)
    step = next(t for t in range(100) if any(faults.down(t, 0, i, j) for i, j in ring.graph.edges))
    survived = faults.surviving(ring, step)
    for i, j in ring.graph.edges:
        down = faults.down(step, 0, i, j)
        assert (j in survived.neighbors(i)) == (not down)
        assert survived.weight(i, j) == (0.0 if down else ring.weight(i, j))
    W = survived.W
    assert np.allclose(W, W.T) and np.allclose(W.sum(0), 1) and np.allclose(W.sum(1), 1)
    assert W[0, 0] == pytest.approx(1 - sum(survived.weight(0, j) for j in survived.neighbors(0)))


@pytest.mark.parametrize("name, options", [("dpsgd", {}), ("powergossip", {"iterations": 2}),
                                           ("powergossip", {"rank": 2}),
                                           ("deepsqueeze", {"codec": "identity", "gamma": 0.5})])
def test_link_drop_keeps_the_average_and_reaches_consensus(name, options):
    """link_drop 0.3, learning rate 0, 100 steps: the workers' average moves by less than 1e-6 of the
    largest starting entry (float32 rounding), and the distance to consensus falls below 1e-4 of
    where it started."""
    network, workers, algorithm = gossip_setup(name, options, link_drop=0.3)
    start = torch.stack([w.params.double() for w in workers])
    for t in range(100):
        algorithm.step(t, 0.0, lambda: None)
    end = torch.stack([w.params.double() for w in workers])
    assert (end.mean(0) - start.mean(0)).abs().max() < 1e-6 * start.abs().max()
    distance = lambda x: (x - x.mean(0)).pow(2).sum()
    assert distance(end) < 1e-4 * distance(start)


def test_powergossip_skips_a_down_edge_on_both_ends():
    """After steps with faults both ends of every edge hold the same shared vector and side."""
    network, workers, algorithm = gossip_setup("powergossip", {"iterations": 3}, link_drop=0.3)
    for t in range(5):
        algorithm.step(t, 0.0, lambda: None)
    for i, j in topologies.ring(N).graph.edges:
        mine, theirs = algorithm.edges[i][j], algorithm.edges[j][i]
        assert mine.side == theirs.side and torch.equal(mine.vector, theirs.vector)


def test_dpsgd_counts_the_bytes_of_the_edges_that_are_up():
    network, workers, algorithm = gossip_setup("dpsgd", {}, link_drop=0.3)
    for t in range(20):
        algorithm.step(t, 0.0, lambda: None)
    faults, ring, size = network.faults, topologies.ring(N), 4 * workers[0].params.numel()
    expected = [size * sum(not faults.down(t, 0, i, j) for t in range(20) for j in ring.neighbors(i)) for i in range(N)]
    assert network.bytes_sent == expected
    assert sum(expected) < 0.8 * 20 * 2 * N * size  # some edges were down


@pytest.mark.parametrize("name, options", [("powergossip", {"iterations": 3}),
                                           ("moniqua", {}), ("deepsqueeze", {})])
def test_a_down_edge_carries_nothing_and_the_rest_is_counted_as_without_faults(name, options):
    """Every round's messages are those of the run without faults minus the down edges (both ways),
    of the same sizes, and the network's count is their sum."""
    clean, faulty = TrafficLog(), TrafficLog()
    for log, drop in ((clean, 0.0), (faulty, 0.3)):
        network, workers, algorithm = gossip_setup(name, options, drop, traffic=log)
        for t in range(4):
            algorithm.step(t, 0.0, lambda: None)
            log.end_step()
    faults, clean_steps, faulty_steps = network.faults, clean.take(), faulty.take()
    for t, (clean_step, faulty_step) in enumerate(zip(clean_steps, faulty_steps)):
        assert len(clean_step) == len(faulty_step) == options.get("iterations", 1)
        for r, ((_, clean_round), (_, faulty_round)) in enumerate(zip(clean_step, faulty_step)):
            assert faulty_round == {pair: size for pair, size in clean_round.items() if not faults.down(t, r, *pair)}
    assert any(len(f[1]) < len(c[1]) for cs, fs in zip(clean_steps, faulty_steps) for c, f in zip(cs, fs))
    sent = [sum(size for step in faulty_steps for _, values in step for (src, _), size in values.items() if src == i)
            for i in range(N)]
    assert network.bytes_sent == sent


@pytest.mark.parametrize("name, reason", [
    ("choco", "choco sums its neighbours' public copies from every message they send"),
    ("allreduce", "allreduce averages with a collective, which has no gossip links to drop"),
    ("local", "local sends no messages, so there is no link to drop"),
])
def test_an_algorithm_that_cannot_lose_a_message_refuses_link_drop(name, reason):
    raw = {"workers": 4, "algorithm": {"name": name}, "train": {"steps": 1}, "faults": {"link_drop": 0.1}}
    with pytest.raises(ConfigError) as error:
        config_module.from_dict(raw)
    assert str(error.value).startswith(f"faults.link_drop: {reason}") and str(error.value).endswith("needs link_drop 0")
    raw["faults"]["link_drop"] = 0.0
    config_module.from_dict(raw)
    network = Network(4)
    network.faults = LinkFaults(0.1, seed=0)
    algorithm_class = ALGORITHMS.entries[name]
    options_class = algorithm_class.Options
    workers = [Worker(i, Model(torch.zeros(8, 8)), OptimizerConfig(lr=0.0), 0) for i in range(4)]
    with pytest.raises(ValueError, match="needs link_drop 0"):
        algorithm_class(topologies.ring(4), network, workers, options=options_class(name=name))


def test_the_consensus_study_runs_with_failing_links(tmp_path, root):
    result = subprocess.run([sys.executable, str(root / "scripts/consensus.py"), "--algorithms", "dpsgd,choco-sign",
                             "--link-drop", "0,0.3", "--steps", "5", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "error: --link-drop 0.3: choco sums its neighbours'" in result.stderr
    result = subprocess.run([sys.executable, str(root / "scripts/consensus.py"), "--algorithms", "dpsgd,powergossip",
                             "--link-drop", "0,0.3", "--steps", "5", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader((tmp_path / "consensus.csv").open()))
    sent = {row["algorithm"]: float(row["bytes_per_worker"]) for row in rows if row["step"] == "5"}
    assert list(sent) == ["dpsgd", "dpsgd link_drop=0.3", "powergossip", "powergossip link_drop=0.3"]
    assert sent["dpsgd link_drop=0.3"] < sent["dpsgd"] and sent["powergossip link_drop=0.3"] < sent["powergossip"]
