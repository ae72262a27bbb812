"""D-PSGD and all-reduce: average preservation, contraction at the spectral-gap rate, exact
bytes, and the local optimizer against torch.optim.SGD."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import topologies
from gossip.algorithms import DPSGD, AllReduce
from gossip.config import OptimizerConfig
from gossip.comm.messages import Network
from gossip.algorithms.worker import Worker


def make_workers(n: int, spread: float = 1.0, optimizer: OptimizerConfig | None = None) -> list[Worker]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2))
    workers = [Worker(i, copy.deepcopy(model), optimizer or OptimizerConfig(lr=0.1), seed=0) for i in range(n)]
    for w in workers:
        w.params.add_(spread * torch.randn(w.params.shape))
    return workers


def consensus_distance(workers: list[Worker]) -> float:
    stacked = torch.stack([w.params for w in workers]).double()
    return (stacked - stacked.mean(0)).pow(2).sum(1).mean().item()


def no_gradient() -> None:
    """A step with zero gradients: the step is pure gossip."""


@pytest.mark.parametrize("topology", [topologies.ring(8), topologies.torus(3, 3), topologies.star(5),
                                      topologies.expander(10, 3)])
def test_gossip_round_preserves_the_average_and_contracts(topology):
    workers = make_workers(topology.n)
    algorithm = DPSGD(topology, Network(topology.n), workers)
    mean_before = torch.stack([w.params for w in workers]).double().mean(0)
    distance_before = consensus_distance(workers)
    algorithm.step(0, 0.1, no_gradient)
    mean_after = torch.stack([w.params for w in workers]).double().mean(0)
    # W is doubly stochastic: the mean moves only by float32 rounding (entries ~1, ~1e-7 each)
    assert torch.allclose(mean_after, mean_before, atol=1e-6)
    assert consensus_distance(workers) < distance_before


def test_consensus_is_a_fixed_point():
    workers = make_workers(6, spread=0.0)
    before = workers[0].params.clone()
    DPSGD(topologies.ring(6), Network(6), workers).step(0, 0.1, no_gradient)
    for w in workers:  # Σ_j w_ij x = x: the weights sum to 1 up to float32 rounding (entries < 1)
        assert torch.allclose(w.params, before, atol=1e-7)


def test_repeated_rounds_contract_at_the_rate_the_spectral_gap_predicts():
    topology = topologies.ring(8, weights="uniform")
    workers = make_workers(8)
    algorithm = DPSGD(topology, Network(8), workers)
    distances = [consensus_distance(workers)]
    for t in range(25):
        algorithm.step(t, 0.1, no_gradient)
        distances.append(consensus_distance(workers))
    rate = 1 - topology.spectral_gap
    for t, d in enumerate(distances):  # the bound (1 − ρ)^t, with float32 rounding on top
        assert d <= distances[0] * rate ** t * (1 + 1e-4)
    # after 25 rounds the slowest mode dominates: the ratio tends to slem² = 1 − ρ; on the 8-ring
    # with W = 1/3 the next modulus is 1/3, (1/3)² / 0.8047² = 0.17, decayed by 0.17^25 by now;
    # 2 % is left for float32 rounding
    assert distances[25] / distances[24] == pytest.approx(rate, rel=0.02)


def test_bytes_per_step_equal_degree_times_parameter_bytes():
    topology = topologies.torus(3, 4)
    workers = make_workers(12)
    network = Network(12)
    algorithm = DPSGD(topology, network, workers)
    for t in range(3):
        algorithm.step(t, 0.1, no_gradient)
    parameter_bytes = 4 * sum(p.numel() for p in workers[0].model.parameters())
    assert network.bytes_sent == [3 * topology.degree(i) * parameter_bytes for i in range(12)]
    shapes = [v.shape for v in workers[0].views]
    assert network.bytes_sent == [3 * DPSGD.bytes_per_step(algorithm.options, shapes, topology, i) for i in range(12)]


def test_allreduce_keeps_workers_identical_and_counts_ring_bytes():
    workers = make_workers(4, spread=0.0)

    def gradients():
        for w in workers:
            w.grads.zero_()
            w.model(torch.randn(3, 5)).pow(2).sum().backward()

    network = Network(4)
    algorithm = AllReduce(topologies.ring(4), network, workers)
    for t in range(3):
        algorithm.step(t, 0.1, gradients)
    for w in workers[1:]:
        assert torch.equal(w.params, workers[0].params)
    parameter_bytes = 4 * workers[0].params.numel()
    assert network.bytes_sent == [3 * (2 * 3 * parameter_bytes // 4)] * 4
    shapes = [v.shape for v in workers[0].views]
    assert network.bytes_sent == [3 * AllReduce.bytes_per_step(None, shapes, topologies.ring(4), i) for i in range(4)]


@pytest.mark.parametrize("nesterov", [False, True])
def test_single_worker_dpsgd_is_torch_sgd(nesterov):
    config = OptimizerConfig(lr=0.05, options={"momentum": 0.9, "nesterov": nesterov}, weight_decay=0.01,
                             weight_decay_1d=True, clip_norm=0.5)
    (worker,) = make_workers(1, optimizer=config)
    reference = copy.deepcopy(worker.model)
    sgd = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9, nesterov=nesterov, weight_decay=0.01)
    algorithm = DPSGD(topologies.ring(1), Network(1), [worker])
    data = [torch.randn(8, 5) for _ in range(5)]
    for t, x in enumerate(data):
        def gradients():
            worker.grads.zero_()
            worker.model(x).pow(2).sum().backward()
        algorithm.step(t, 0.05, gradients)
        sgd.zero_grad()
        reference(x).pow(2).sum().backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
        sgd.step()
    for mine, theirs in zip(worker.model.parameters(), reference.parameters()):
        # the same float32 steps in another order of operations: rounding over 5 steps
        assert torch.allclose(mine, theirs, atol=1e-6)


def test_gradients_land_in_the_flat_vector():
    (worker,) = make_workers(1)
    worker.model(torch.randn(4, 5)).sum().backward()
    assert worker.grads.abs().sum() > 0
    offset = 0
    for p in worker.model.parameters():
        assert torch.equal(p.grad.reshape(-1), worker.grads[offset:offset + p.numel()])
        offset += p.numel()


def test_one_peer_exponential_reaches_the_exact_average_after_log2_n_steps():
    """On 8 workers the one-peer exponential graph's W(0) W(1) W(2) is exactly J/8 (each step pairs
    i with i XOR 2^t at weight 1/2), so 3 gradient-free D-PSGD steps leave every worker at the mean."""
    schedule = topologies.OnePeerExponential(8)
    workers = make_workers(8)
    mean = torch.stack([w.params for w in workers]).double().mean(0)
    network = Network(8)
    algorithm = DPSGD(schedule, network, workers)
    for t in range(3):
        algorithm.step(t, 0.1, no_gradient)
    for w in workers:
        # float32 rounding only: three halvings and sums of values of size ~3 (spread 1, init ~0.5)
        torch.testing.assert_close(w.params.double(), mean, rtol=0, atol=1e-6)
    # one peer per step: 3 full messages per worker
    assert network.bytes_sent == [3 * 4 * workers[0].params.numel()] * 8


def test_allreduce_steps_every_worker_with_the_mean_gradient():
    """Workers that start equal and see different batches take the step ``x − η · mean_i g_i``,
    computed here with plain autograd on copies of the model."""
    workers = make_workers(4, spread=0.0)
    batches = [torch.randn(3, 5, generator=torch.Generator().manual_seed(10 + i)) for i in range(4)]
    reference = copy.deepcopy(workers[0].model)
    grads = []
    for x in batches:
        reference.zero_grad()
        reference(x).pow(2).sum().backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in reference.parameters()]))
    expected = workers[0].params.clone() - 0.1 * torch.stack(grads).mean(0)

    def gradients():
        for w, x in zip(workers, batches):
            w.grads.zero_()
            w.model(x).pow(2).sum().backward()

    AllReduce(topologies.ring(4), Network(4), workers).step(0, 0.1, gradients)
    for w in workers:
        # float32: a mean of 4 gradients of size ~10 and one product with 0.1
        torch.testing.assert_close(w.params, expected, rtol=0, atol=1e-6)


def test_weight_decay_leaves_one_dimensional_tensors_alone_unless_asked():
    """With zero gradients and plain SGD one step is ``x ← x − η λ x`` on the decayed tensors only:
    matrices always, biases only with ``weight_decay_1d``."""
    lr, decay = 0.1, 0.5
    for decay_1d in (False, True):
        config = OptimizerConfig(lr=lr, weight_decay=decay, weight_decay_1d=decay_1d)
        (worker,) = make_workers(1, optimizer=config)
        before = [v.clone() for v in worker.views]
        DPSGD(topologies.ring(1), Network(1), [worker]).step(0, lr, no_gradient)
        for view, old in zip(worker.views, before):
            factor = 1 - lr * decay if (view.dim() > 1 or decay_1d) else 1.0
            torch.testing.assert_close(view, old * factor, rtol=1e-6, atol=0)  # one float32 product
