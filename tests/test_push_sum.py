"""Stochastic gradient push: push-sum over directed and time-varying graphs reaches the exact
average in the de-biased models ``z = x / w``, its step against the paper's rule, exact bytes,
and the refusals of the algorithms that need a symmetric W."""

from __future__ import annotations

import copy

import networkx as nx
import pytest
import torch
from torch import nn

import topologies
from gossip import OptimizerConfig
from gossip import config as config_module
from gossip.algorithms import DPSGD, SGP
from gossip.comm.messages import Network
from gossip.registry import ConfigError
from gossip.comm.spawn import spawn
from gossip.algorithms.worker import Worker

from conftest import ROOT, dry_run

N = 16


def irregular_digraph() -> topologies.Topology:
    """A directed ring 0 → 1 → … → 7 → 0 with chords out of nodes 0 and 3: out-degrees 1 to 3, so
    its column-stochastic W is not row-stochastic and plain gossip does not average."""
    graph = nx.DiGraph([(i, (i + 1) % 8) for i in range(8)] + [(0, 4), (0, 2), (3, 6)])
    return topologies.from_networkx(graph)


def float64_workers(n: int, lr: float = 0.0, momentum: float = 0.0) -> list[Worker]:
    """Workers of a ``Linear(4, 3)`` in float64, each from its own start."""
    model = nn.Linear(4, 3).double()
    options = {"momentum": momentum} if momentum else {}
    workers = [Worker(i, copy.deepcopy(model), OptimizerConfig(lr=lr, options=options), seed=0) for i in range(n)]
    gen = torch.Generator().manual_seed(0)
    for w in workers:
        w.params.copy_(torch.randn(w.params.shape, generator=gen, dtype=torch.float64))
    return workers


def quadratics(n: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each worker's own quadratic, ``g_i(z) = A_i z + c_i`` (float64, seeded)."""
    gen = torch.Generator().manual_seed(1)
    A = torch.randn(n, d, d, generator=gen, dtype=torch.float64) / d ** 0.5
    return A, torch.randn(n, d, generator=gen, dtype=torch.float64)


def no_gradient() -> None:
    """Zero gradients: with lr 0 a step is pure push-sum."""


def test_the_averaged_model_is_the_average_of_the_numerators_which_push_sum_preserves():
    """The averaged model (and the consensus distance's centre) of SGP is ``1/n Σ x_i``: at lr 0 on
    an irregular digraph it stays the workers' starting average at every step, while the mean of
    the de-biased ``z_i`` moves away from it before both reach it."""
    workers = float64_workers(8)
    average = torch.stack([w.params for w in workers]).mean(0)
    algorithm = SGP(irregular_digraph(), Network(8), workers)
    largest = 0.0
    for t in range(30):
        algorithm.step(t, 0.0, no_gradient)
        mean = algorithm.averaged_params()
        torch.testing.assert_close(mean, average, rtol=0, atol=1e-12)
        largest = max(largest, (torch.stack([w.params for w in workers]).mean(0) - average).abs().max().item())
        z = torch.stack([w.params for w in workers])
        assert algorithm.consensus_distance(mean) == pytest.approx((z - mean).pow(2).sum(1).mean().item(), rel=1e-12)
    assert largest > 1e-2


@pytest.mark.parametrize("topology, regular", [(topologies.directed_exponential(N), True),
                                               (topologies.build_schedule("one_peer_directed_exponential", N), True),
                                               (topologies.directed_erdos_renyi(N, 0.2), False),
                                               (irregular_digraph(), False)],
                         ids=["directed_exponential", "one_peer_directed_exponential", "directed_erdos_renyi",
                              "irregular"])
def test_push_sum_reaches_the_exact_average_in_z(topology, regular):
    """200 steps at lr 0, float64. On a graph whose nodes all have the same in- and out-degree
    W is doubly stochastic, so the weights stay 1 and x averages too; on the irregular graphs only
    z does."""
    n = topology.n
    workers = float64_workers(n)
    average = torch.stack([w.params for w in workers]).mean(0)
    algorithm = SGP(topology, Network(n), workers)
    for t in range(200):
        algorithm.step(t, 0.0, no_gradient)
    z = torch.stack([w.params for w in workers])
    x = z * torch.cat([algorithm.weight[w.id] for w in workers])[:, None]
    assert (z - average).abs().max() < 1e-10
    if regular:
        assert (x - average).abs().max() < 1e-10
    else:
        assert (x - average).abs().max() > 1e-2  # x alone converges to a weighted average, not this one
        assert torch.cat(list(algorithm.weight.values())).sub(1).abs().max() > 0.1


def test_one_peer_schedule_averages_exactly_in_log2_n_steps():
    workers = float64_workers(N)
    average = torch.stack([w.params for w in workers]).mean(0)
    algorithm = SGP(topologies.build_schedule("one_peer_directed_exponential", N), Network(N), workers)
    for t in range(4):
        algorithm.step(t, 0.0, no_gradient)
    assert (torch.stack([w.params for w in workers]) - average).abs().max() < 1e-12


@pytest.mark.parametrize("order", ["overlap", "step_first"])
def test_one_step_is_the_papers_rule(order):
    """Two steps with real gradients ``g_i(z) = A_i z + c_i`` at the de-biased model, against
    ``x½ = x − η g(z); x = W x½; w = W w; z = x / w`` (step_first, the paper's Algorithm 1) or
    ``x = W x − η g(z)`` (overlap), in float64."""
    topology, lr = irregular_digraph(), 0.1
    n = topology.n
    workers = float64_workers(n, lr=lr)
    A, c = quadratics(n, workers[0].params.numel())
    W = torch.tensor(topology.W)
    X, weights = torch.stack([w.params.clone() for w in workers]), torch.ones(n, 1, dtype=torch.float64)

    def gradients() -> None:
        for w in workers:
            w.grads.copy_(A[w.id] @ w.params + c[w.id])

    algorithm = SGP(topology, Network(n), workers, options=SGP.Options(order=order))
    for t in range(2):
        G = torch.einsum("ide,ie->id", A, X / weights) + c
        X = W @ (X - lr * G) if order == "step_first" else W @ X - lr * G
        weights = W @ weights
        algorithm.step(t, lr, gradients)
    torch.testing.assert_close(torch.stack([w.params for w in workers]), X / weights, rtol=1e-12, atol=1e-12)
    assert (weights - 1).abs().max() > 0.1  # the weights moved: the de-biasing is exercised


def _irregular_run(rank: int, world_size: int, order: str, stop_at: int | None, steps: int = 8) -> dict:
    """SGP on the irregular digraph with gradients ``A_i z + c_i`` at lr 0.1, for this process's
    block of workers. With ``stop_at`` the run is rebuilt after that many steps from what a
    checkpoint holds (each worker's ``z`` and the algorithm's state), on fresh workers, as a resume
    does. Returns every local worker's ``z`` (a list) and ``w``."""
    topology = irregular_digraph()
    n = topology.n
    network = Network(n, rank, world_size)
    A, c = quadratics(n, float64_workers(1)[0].params.numel())

    def build() -> tuple[list[Worker], SGP]:
        workers = [w for w in float64_workers(n, lr=0.1) if network.is_local(w.id)]
        return workers, SGP(topology, network, workers, options=SGP.Options(order=order))

    workers, algorithm = build()
    for t in range(steps):
        if t == stop_at:
            saved = {"z": {w.id: w.params.clone() for w in workers},
                     "algorithm": copy.deepcopy({w.id: algorithm.worker_state(w) for w in workers})}
            workers, algorithm = build()
            for w in workers:
                w.params.copy_(saved["z"][w.id])
            for w in workers:
                algorithm.load_worker_state(w, saved["algorithm"][w.id])
        algorithm.step(t, 0.1, lambda: [w.grads.copy_(A[w.id] @ w.params + c[w.id]) for w in workers])
    return {w.id: (w.params.tolist(), algorithm.weight[w.id].item()) for w in workers}


def _irregular_runs_in_process(rank: int, world_size: int) -> dict:
    return {(order, stop_at): _irregular_run(rank, world_size, order, stop_at)
            for order in ("overlap", "step_first") for stop_at in (None, 3)}


def test_two_processes_and_a_resume_give_the_numbers_of_one_process():
    """Placement and resume with weights far from 1: the irregular digraph (a sender's in- and
    out-neighbours differ, and they live in both processes) in 2 processes of 4 workers, straight
    and resumed after 3 of 8 steps, against one process straight."""
    processes = spawn(_irregular_runs_in_process, 2, timeout=120)
    for order in ("overlap", "step_first"):
        reference = _irregular_run(0, 1, order, None)
        assert max(abs(w - 1) for _, w in reference.values()) > 0.1  # push-sum's de-biasing is at work
        for stop_at in (None, 3):
            got = {i: value for results in processes for i, value in results[order, stop_at].items()}
            assert sorted(got) == list(range(8))
            for i, (z, w) in reference.items():
                assert got[i][0] == pytest.approx(z, rel=1e-12, abs=1e-12)
                assert got[i][1] == pytest.approx(w, rel=1e-12, abs=1e-12)


def test_the_network_counts_exactly_the_analytic_bytes():
    """Each message is ``x_i`` and ``w_i`` (parameters + 1 floats) to every out-neighbour."""
    topology = irregular_digraph()
    model = nn.Linear(4, 3)
    workers = [Worker(i, copy.deepcopy(model), OptimizerConfig(lr=0.1), seed=0) for i in range(8)]
    network = Network(8)
    algorithm = SGP(topology, network, workers)
    for t in range(3):
        algorithm.step(t, 0.1, no_gradient)
    shapes = [v.shape for v in workers[0].views]
    analytic = [SGP.bytes_per_step(algorithm.options, shapes, topology, i) for i in range(8)]
    assert analytic == [len(topology.out_neighbors(i)) * 4 * (15 + 1) for i in range(8)]
    assert network.bytes_sent == [3 * b for b in analytic]


def test_the_dry_run_prints_the_bytes(capsys):
    """On directed_exponential(8) every worker sends to 3 out-neighbours: 3 × 4 × (parameters + 1)."""
    printed, parameters = dry_run(["--config", str(ROOT / "configs/logistic.yaml"), "--set", "algorithm.name=sgp",
                                   "--set", "topology.name=directed_exponential", "--set", "workers=8"], capsys)
    assert f"worker 0 sends {3 * 4 * (parameters + 1):,} B" in printed


def test_the_other_algorithms_refuse_a_directed_topology():
    with pytest.raises(ValueError, match="dpsgd needs an undirected topology .* is directed .*name sgp"):
        DPSGD(topologies.directed_exponential(4), Network(4), float64_workers(4))
    raw = {"workers": 8, "topology": {"name": "directed_exponential"}, "algorithm": {"name": "gradient_tracking"},
           "train": {"steps": 1}}
    with pytest.raises(ConfigError, match="^algorithm.name: gradient_tracking needs an undirected topology"):
        config_module.from_dict(raw)
    raw["algorithm"] = {"name": "sgp"}
    config_module.from_dict(raw)
