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
from gossip.algorithms.edge import orthonormalize
from gossip.comm.messages import Network
from gossip.comm.spawn import spawn
from gossip.train import main
from gossip.algorithms.worker import Worker

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
    # exact projections of x_j − x_i added to one side and taken from the other: the mean moves by
    # float32 rounding only, over up to 12 rounds of entries of size ~3
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
        for w in workers:  # batched against one-by-one float32 products: rounding of size-~3 entries
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
    # Δ = u wᵀ (rank 1), w_01 = 1/2: the first round (right side, random v̂) leaves Δ(I − v̂v̂ᵀ), still
    # u times a row; its d = Δ v̂ is parallel to u, so the second round (left side, û) projects on
    # û ûᵀ, which keeps all of Δ: the pair meets exactly. What is left is float32 rounding, ~1e-7
    # relative per entry, ~1e-14 in squares: 1e-8 of the start is a wide margin
    assert distance(workers) <= before * 1e-8


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
    assert torch.allclose(torch.stack([w.params for w in workers]).mean(0), mean, atol=1e-6)  # float32 rounding
    # the capped ranks are full for the 1-column and 1-row matrices (exact gossip there) and 3 of 3
    # for the 3 × 8 one: every round is D-PSGD's, which at least halves the distance on this ring
    assert distance(workers) < before / 2
    shapes = [v.shape for v in workers[0].views]
    assert network.bytes_sent == [2 * PowerGossip.bytes_per_step(options, shapes, topologies.ring(4), 0)] * 4


def test_placement_does_not_change_training(tmp_path):
    args = ["--config", str(ROOT / "configs/logistic.yaml"), "--set", "workers=4", "--set", "train.steps=40",
            "--set", "train.eval_every=10", "--set", "algorithm.name=powergossip",
            "--set", "algorithm.iterations=2", "--no-progress"]
    assert main(args + ["--run-dir", str(tmp_path / "one")]) == 0
    two = run_cli(args + ["--run-dir", str(tmp_path / "two")], cwd=tmp_path, torchrun=2, timeout=180)
    assert two.returncode == 0, two.stderr
    one, two = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [10, 20, 30, 40]
    for a, b in zip(one, two):
        # the edges' arithmetic is the same bit for bit (test above); the mean over workers is
        # summed per process first: float32 reordering, ~1e-7 relative per addition
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["bytes_per_worker"] == a["bytes_per_worker"]


def mixed_net() -> nn.Module:
    """Matrices of distinct shapes (a conv kernel viewed 6 × 27, 10 × 24, 7 × 10), two of one shape
    (7 × 7, a shape group of two), and 1-D tensors (biases, a norm's scale and shift)."""
    return nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(24, 10), nn.Linear(10, 7, bias=False), nn.Linear(7, 7), nn.Linear(7, 7))


def initial_vectors(edge, matrices: list[tuple[int, torch.Size]], rank: int) -> dict[int, torch.Tensor]:
    """The shared starting vectors of every matrix (by parameter index), read from the edge's flat
    buffer in its documented layout (MatrixPlan.blocks): shapes ``(rows, cols)`` in increasing order,
    matrices of one shape in parameter order, each a ``cols × rank`` block (the right side first)."""
    flat, out, offset = edge.vector, {}, 0
    for k, shape in sorted(matrices, key=lambda item: (item[1][0], item[1].numel() // item[1][0], item[0])):
        cols = shape.numel() // shape[0]
        r = min(rank, shape[0], cols)
        out[k] = flat[offset:offset + cols * r].reshape(cols, r).clone()
        offset += cols * r
    assert offset == flat.numel()
    return out


def reference_powergossip(params: dict[int, list[torch.Tensor]], topology, vectors: dict, iterations: int,
                          steps: int) -> dict[int, list[torch.Tensor]]:
    """PowerGossip with warm start and no gradient, from ALGORITHMS.md alone: per step, 1-D tensors
    mixed once as in D-PSGD, then ``iterations`` rounds on every matrix ``M = x.reshape(rows, -1)``;
    in a round every edge {lo < hi} projects the pre-round difference ``Δ = M_hi − M_lo`` on
    ``Q = qr(v).Q`` (right side: d = Δ Q, update d Qᵀ; left side: d = Δᵀ Q, update Q dᵀ), adds
    ``+w·update`` to lo and ``−w·update`` to hi, and keeps ``v ← d``; the side flips every round.
    Computed in float64."""
    x = {i: [p.double().clone() for p in ps] for i, ps in params.items()}
    v = {edge: {k: t.double().clone() for k, t in per.items()} for edge, per in vectors.items()}
    edges = sorted(v)
    side = 0
    for _ in range(steps):
        for k in range(len(x[0])):
            if x[0][k].dim() == 1:
                old = {i: x[i][k].clone() for i in x}
                for i in x:
                    x[i][k] = old[i] + sum(topology.weight(i, j) * (old[j] - old[i]) for j in topology.neighbors(i))
        for _ in range(iterations):
            updates = {i: [torch.zeros_like(p) for p in x[i]] for i in x}
            for lo, hi in edges:
                w = topology.weight(lo, hi)
                for k, vk in v[(lo, hi)].items():
                    rows = x[lo][k].shape[0]
                    delta = (x[hi][k] - x[lo][k]).reshape(rows, -1)
                    q = torch.linalg.qr(vk).Q
                    if side == 0:
                        d = delta @ q
                        update = d @ q.T
                    else:
                        d = delta.T @ q
                        update = q @ d.T
                    updates[lo][k] += w * update.reshape(x[lo][k].shape)
                    updates[hi][k] -= w * update.reshape(x[hi][k].shape)
                    v[(lo, hi)][k] = d
            for i in x:
                x[i] = [p + u for p, u in zip(x[i], updates[i])]
            side = 1 - side
    return x


@pytest.mark.parametrize("rank", [1, 2])
def test_steps_equal_a_reference_built_from_qr_and_the_lower_id_sign(rank):
    """Three steps of two rounds (both sides, warm start) on a star (unequal degrees) and a model
    with 1-D tensors, a conv kernel and a shape group of two, against :func:`reference_powergossip`,
    which shares no code with the algorithm (no orthonormalize, edge.sign or plan)."""
    torch.manual_seed(0)
    topology = topologies.star(4)
    workers = make_workers(mixed_net(), range(4))
    algorithm = PowerGossip(topology, Network(4), workers, options=PowerGossipOptions(iterations=2, rank=rank))
    shapes = [p.shape for p in workers[0].model.parameters()]
    matrices = [(k, s) for k, s in enumerate(shapes) if len(s) >= 2]
    assert any(len(s) == 1 for s in shapes) and len(matrices) == 5
    vectors = {}
    for i in range(4):
        for j in topology.neighbors(i):
            if i < j:
                assert algorithm.edges[i][j].side == 0  # a fresh edge starts on the right side
                vectors[(i, j)] = initial_vectors(algorithm.edges[i][j], matrices, rank)
    params = {w.id: [p.detach().clone() for p in w.model.parameters()] for w in workers}
    expected = reference_powergossip(params, topology, vectors, iterations=2, steps=3)
    for t in range(3):
        algorithm.step(t, 0.1, no_gradient)
    for w in workers:
        for got, want in zip(w.model.parameters(), expected[w.id]):
            # float32 against float64 over 6 rounds of products of size-~3 entries: ~1e-6 relative
            torch.testing.assert_close(got.detach().double(), want, rtol=1e-4, atol=1e-5)
