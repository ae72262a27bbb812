"""PowerGossip: shared edge state, exact projections (average preserved, consensus fixed), the
power iteration's speed on rank-1 differences, the random-projection bound, and exact bytes."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import topologies
from gossip.algorithms import PowerGossip
from gossip.algorithms.powergossip import PowerGossipOptions
from gossip.config import OptimizerConfig
from gossip.edge import orthonormalize
from gossip.network import Network
from gossip.spawn import spawn
from gossip.worker import Worker

from conftest import ROOT, read_metrics, run_cli


def conv_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(),
                         nn.Linear(6 * 4 * 4, 10), nn.Linear(10, 10), nn.Linear(10, 10, bias=False))


def make_workers(model: nn.Module, ids, spread: float = 1.0) -> list[Worker]:
    workers = [Worker(i, copy.deepcopy(model), OptimizerConfig(lr=0.1), seed=0) for i in ids]
    for w in workers:
        gen = torch.Generator().manual_seed(100 + w.id)
        w.params.add_(spread * torch.randn(w.params.shape, generator=gen))
    return workers


def no_gradient() -> None:
    """Zero gradients: a step is pure gossip."""


def distance(workers: list[Worker]) -> float:
    stacked = torch.stack([w.params for w in workers]).double()
    return (stacked - stacked.mean(0)).pow(2).sum(1).mean().item()


def edge_states(algorithm: PowerGossip) -> dict[tuple[int, int], tuple[list[torch.Tensor], int]]:
    return {(i, j): (edge.vectors, edge.side) for i, edges in algorithm.edges.items() for j, edge in edges.items()}


@pytest.mark.parametrize("warm_start", [True, False])
def test_both_endpoints_hold_identical_vectors_after_50_rounds(warm_start):
    torch.manual_seed(0)
    workers = make_workers(conv_net(), range(6))
    options = PowerGossipOptions(iterations=5, rank=2, warm_start=warm_start)
    algorithm = PowerGossip(topologies.ring(6), Network(6), workers, options=options)
    for t in range(10):
        algorithm.step(t, 0.1, no_gradient)
    states = edge_states(algorithm)
    for (i, j), (vectors, side) in states.items():
        their_vectors, their_side = states[(j, i)]
        assert side == their_side
        assert all(torch.equal(a, b) for a, b in zip(vectors, their_vectors))


def _edge_states_in_process(rank: int, world_size: int):
    torch.manual_seed(0)
    network = Network(4, rank, world_size)
    workers = make_workers(conv_net(), network.local_workers)
    algorithm = PowerGossip(topologies.ring(4), network, workers, options=PowerGossipOptions(iterations=5))
    for t in range(10):
        algorithm.step(t, 0.1, no_gradient)
    # numpy travels back by value (tensors would be shared through file descriptors)
    states = {key: ([v.numpy() for v in vectors], side) for key, (vectors, side) in edge_states(algorithm).items()}
    return states, [w.params.numpy() for w in workers]


def test_edge_state_and_parameters_agree_across_processes():
    single, params = _edge_states_in_process(0, 1)
    parts = spawn(_edge_states_in_process, 2, timeout=90)
    across = {**parts[0][0], **parts[1][0]}
    for key, (vectors, side) in single.items():
        assert across[key][1] == side and all((a == b).all() for a, b in zip(vectors, across[key][0]))
    for a, b in zip(params, parts[0][1] + parts[1][1]):
        assert (a == b).all()


@pytest.mark.parametrize("rank", [1, 2])
@pytest.mark.parametrize("iterations", [1, 4])
def test_rounds_preserve_the_average_and_contract(rank, iterations):
    torch.manual_seed(0)
    workers = make_workers(conv_net(), range(8))
    algorithm = PowerGossip(topologies.torus(2, 4), Network(8), workers,
                            options=PowerGossipOptions(iterations=iterations, rank=rank))
    mean = torch.stack([w.params for w in workers]).double().mean(0)
    before = distance(workers)
    for t in range(3):
        algorithm.step(t, 0.1, no_gradient)
    assert torch.allclose(torch.stack([w.params for w in workers]).double().mean(0), mean, atol=1e-5)
    assert distance(workers) < before


def expected_round(algorithm: PowerGossip, workers: list[Worker]) -> tuple[dict, dict]:
    """One compressed round computed edge by edge and matrix by matrix, straight from the rule
    (right side: x_i += w_ij (p_j − p_i) v̂ᵀ with p = M v̂; left side: x_i += w_ij v̂ (q_j − q_i)ᵀ with
    q = Mᵀ v̂): the parameters of every worker and the next vectors of every edge."""
    by_id = {w.id: w for w in workers}
    params, vectors = {w.id: w.params.clone() for w in workers}, {}
    for w in workers:
        after = params[w.id]
        for j, edge in algorithm.edges[w.id].items():
            weight, side, parts = algorithm.topology.weight(w.id, j), edge.side, []
            for (shape, members), group_vectors in zip(algorithm.plan.groups, edge.vectors):
                for k, v in zip(members, group_vectors):
                    v_hat = orthonormalize(v.unsqueeze(0))[0]
                    mine, theirs = (x.views[k].reshape(shape) for x in (w, by_id[j]))
                    if side == 0:
                        d = theirs @ v_hat - mine @ v_hat
                        update = weight * d @ v_hat.T
                    else:
                        d = theirs.T @ v_hat - mine.T @ v_hat
                        update = weight * v_hat @ d.T
                    start = sum(v.numel() for v in w.views[:k])
                    after[start:start + update.numel()] += update.reshape(-1)
                    parts.append(edge.sign * d.reshape(-1))
            vectors[(w.id, j)] = torch.cat(parts)
    return params, vectors


@pytest.mark.parametrize("rank", [1, 2])
def test_a_round_applies_every_edge_and_matrix_as_the_rule_says(rank):
    """The batched round (one send buffer per worker, one product per shape group and edge, one
    update per group, a single matrix projected for all edges in one product) equals the rule
    applied edge by edge, on both sides, with a star's unequal degrees and shape groups of one and
    of several matrices."""
    torch.manual_seed(0)
    workers = make_workers(conv_net(), range(4))
    algorithm = PowerGossip(topologies.star(4), Network(4), workers, options=PowerGossipOptions(rank=rank))
    for _ in range(2):  # right side, then left side
        params, vectors = expected_round(algorithm, workers)
        algorithm.gossip_round(with_dense=False)
        for w in workers:
            assert torch.allclose(w.params, params[w.id], atol=1e-5)
            for j, edge in algorithm.edges[w.id].items():
                assert torch.allclose(edge.vector, vectors[(w.id, j)], atol=1e-5)


@pytest.mark.parametrize("warm_start", [True, False])
def test_prefetched_rounds_equal_rounds_made_one_by_one(warm_start):
    """A step's rounds make the next round's messages during the update pass (prefetch); that
    changes no bit of the parameters or the edges' vectors."""
    options = PowerGossipOptions(iterations=4, warm_start=warm_start)
    runs = []
    for prefetch in (True, False):
        torch.manual_seed(0)
        workers = make_workers(conv_net(), range(5))
        algorithm = PowerGossip(topologies.ring(5), Network(5), workers, options=options)
        for t in range(3):
            if prefetch:
                algorithm.step(t, 0.1, no_gradient)
            else:
                for round_index in range(options.iterations):
                    algorithm.gossip_round(with_dense=round_index == 0)
        runs.append(([w.params.clone() for w in workers], edge_states(algorithm)))
    (params, states), (params_plain, states_plain) = runs
    assert all(torch.equal(a, b) for a, b in zip(params, params_plain))
    for key, (vectors, side) in states.items():
        assert side == states_plain[key][1] and all(torch.equal(a, b) for a, b in zip(vectors, states_plain[key][0]))


@pytest.mark.parametrize("warm_start", [True, False])
def test_consensus_is_a_fixed_point(warm_start):
    torch.manual_seed(0)
    workers = make_workers(conv_net(), range(5), spread=0.0)
    reference = workers[0].params.clone()
    algorithm = PowerGossip(topologies.ring(5), Network(5), workers,
                            options=PowerGossipOptions(iterations=3, rank=2, warm_start=warm_start))
    for t in range(3):
        algorithm.step(t, 0.1, no_gradient)
    for w in workers:  # matrices exactly (d = 0); the uncompressed mix Σ w_ij x rounds in the last bit
        assert torch.allclose(w.params, reference, rtol=0, atol=1e-6)


def test_warm_started_power_iteration_removes_a_rank_one_difference_within_three_rounds():
    torch.manual_seed(0)
    model = nn.Linear(40, 30, bias=False)
    workers = make_workers(model, range(2), spread=0.0)
    workers[1].params.add_(torch.outer(torch.randn(30), torch.randn(40)).reshape(-1))
    algorithm = PowerGossip(topologies.ring(2), Network(2), workers, options=PowerGossipOptions(iterations=3))
    before = distance(workers)
    algorithm.step(0, 0.1, no_gradient)
    assert distance(workers) <= before / 100


def test_random_projections_contract_at_least_as_fast_as_the_theorem_bound():
    """E‖x − x̄‖² shrinks per round by at least 1 − ρδ (δ = 1/n_cols) for random projections."""
    torch.manual_seed(0)
    topology = topologies.ring(8, weights="uniform")
    workers = make_workers(nn.Linear(10, 10, bias=False), range(8))
    algorithm = PowerGossip(topology, Network(8), workers, options=PowerGossipOptions(warm_start=False))
    rounds = 400
    before = distance(workers)
    for t in range(rounds):
        algorithm.step(t, 0.1, no_gradient)
    rate = (distance(workers) / before) ** (1 / rounds)
    bound = 1 - topology.spectral_gap / 10
    assert rate < bound - 0.002, (rate, bound)  # the geometric mean over 400 rounds varies by ~5e-4


@pytest.mark.parametrize("iterations, min_size", [(1, 0), (3, 0), (2, 100)])
def test_counted_bytes_equal_the_analytic_formula(iterations, min_size):
    torch.manual_seed(0)
    topology = topologies.torus(3, 3)
    network = Network(9)
    workers = make_workers(conv_net(), range(9))
    options = PowerGossipOptions(iterations=iterations, min_compress_size=min_size)
    algorithm = PowerGossip(topology, network, workers, options=options)
    for t in range(2):
        algorithm.step(t, 0.1, no_gradient)
    shapes = [v.shape for v in workers[0].views]
    per_step = PowerGossip.bytes_per_step(options, shapes, topology, 0)
    assert network.bytes_sent == [2 * per_step] * 9
    matrices = [s for s in shapes if len(s) >= 2 and s.numel() >= min_size]
    dense = sum(s.numel() for s in shapes) - sum(s.numel() for s in matrices)
    rows, cols = sum(s[0] for s in matrices), sum(s.numel() // s[0] for s in matrices)
    assert per_step == 4 * 4 * (iterations * (rows + cols) / 2 + dense)


@pytest.mark.parametrize("model", ["resnet20", "lstm"])
def test_counted_bytes_equal_the_analytic_formula_for_the_papers_models(model):
    """ResNet-20 and the tied LSTM (a small vocabulary keeps it quick): counted = analytic."""
    from gossip.tasks.models import LSTMLanguageModel, ResNet20

    torch.manual_seed(0)
    net = ResNet20() if model == "resnet20" else LSTMLanguageModel(500, 64, 64, 3)
    topology, network = topologies.ring(3), Network(3)
    workers = make_workers(net, range(3))
    options = PowerGossipOptions(iterations=2)
    algorithm = PowerGossip(topology, network, workers, options=options)
    algorithm.step(0, 0.1, no_gradient)
    shapes = [p.shape for p in net.parameters()]
    assert network.bytes_sent == [PowerGossip.bytes_per_step(options, shapes, topology, 0)] * 3
    matrices = [s for s in shapes if len(s) >= 2]
    rows_and_cols = sum(s[0] + s.numel() // s[0] for s in matrices)
    vectors = sum(s.numel() for s in shapes if len(s) < 2)
    assert network.bytes_sent[0] == 2 * 4 * (2 * rows_and_cols / 2 + vectors)


def test_rank_is_capped_by_the_smaller_side_of_each_matrix():
    """Asking for more columns than a matrix's smaller side uses min(rows, cols) columns."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 1), nn.Linear(1, 3, bias=False), nn.Linear(3, 8, bias=False))
    workers = make_workers(model, range(4))
    network = Network(4)
    options = PowerGossipOptions(rank=4, iterations=3)
    algorithm = PowerGossip(topologies.ring(4), network, workers, options=options)
    assert algorithm.plan.ranks == [1, 1, 3]
    mean, before = torch.stack([w.params for w in workers]).mean(0), distance(workers)
    for t in range(2):
        algorithm.step(t, 0.1, no_gradient)
    assert torch.allclose(torch.stack([w.params for w in workers]).mean(0), mean, atol=1e-6)
    assert distance(workers) < before / 2
    shapes = [v.shape for v in workers[0].views]
    assert network.bytes_sent == [2 * PowerGossip.bytes_per_step(options, shapes, topologies.ring(4), 0)] * 4


def test_placement_does_not_change_training(tmp_path):
    args = ["--config", str(ROOT / "configs/logistic.yaml"), "--set", "workers=4", "--set", "train.steps=40",
            "--set", "train.eval_every=10", "--set", "algorithm.name=powergossip",
            "--set", "algorithm.iterations=2", "--no-progress"]
    one = run_cli(args + ["--run-dir", str(tmp_path / "one")], cwd=tmp_path)
    four = run_cli(args + ["--run-dir", str(tmp_path / "four")], cwd=tmp_path, torchrun=4, timeout=180)
    assert one.returncode == 0 and four.returncode == 0, one.stderr + four.stderr
    for a, b in zip(read_metrics(tmp_path / "one"), read_metrics(tmp_path / "four")):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["bytes_per_worker"] == a["bytes_per_worker"]


def test_an_edge_state_saved_as_per_group_blocks_loads_to_the_same_vector():
    """Checkpoints written before the edge state became one flat vector still resume."""
    torch.manual_seed(0)
    workers = make_workers(conv_net(), range(3))
    algorithm = PowerGossip(topologies.ring(3), Network(3), workers, options=PowerGossipOptions(iterations=3))
    algorithm.step(0, 0.1, no_gradient)
    edge = algorithm.edges[0][1]
    expected = edge.vector.clone()
    edge.load_state_dict({"vectors": [v.clone() for v in edge.vectors], "side": edge.side,
                          "generator": edge.generator.get_state()})
    assert torch.equal(edge.vector, expected) and len(edge.vectors) == len(algorithm.plan.groups)
