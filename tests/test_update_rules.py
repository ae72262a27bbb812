"""Every algorithm's update with real gradients, in both orders, against its paper's formula.

Three workers on a ring (``W = 1/3`` everywhere; five for the methods whose corrections cancel
under exact averaging: gradient tracking, D² and quasi-global momentum), each with its own starting point and its own
quadratic, so that the gradient ``g_i(x) = A_i x + c_i`` depends on where it is taken: an
algorithm that takes it at the wrong point, or mixes before instead of after the step, lands
elsewhere. Two steps are taken, so that state carried from one step to the next (Choco's public
copies, DeepSqueeze's error memory, PowerGossip's vectors) is checked too. Each reference is
written here in plain float64 torch from the update rules of docs/algorithms.md; the tolerance
1e-5 is float32 rounding (about 1e-7 relative per operation) over a few dozen operations on
values of order 1.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import topologies
from gossip import OptimizerConfig
from gossip.algorithms import AllReduce, Choco, D2, DeepSqueeze, DPSGD, GradientTracking, Local, Moniqua, PowerGossip, QGM
from gossip.comm.messages import Network
from gossip.algorithms.worker import Worker

N, LR, STEPS = 3, 0.1, 2
N_SPARSE = 5  # a ring on which one round is not exact averaging
ORDERS = ["overlap", "step_first"]
TOLERANCE = dict(atol=1e-5, rtol=1e-5)


class Problem:
    """Three workers of a ``Linear(3, 2)`` model (a 2×3 matrix and a bias of 2) and their quadratics."""

    def __init__(self, clip_norm: float | None = None, clip_scope: str = "worker", spread: float = 1.0,
                 momentum: float = 0.0, n: int = N) -> None:
        gen = torch.Generator().manual_seed(0)
        model = nn.Linear(3, 2)
        config = OptimizerConfig(lr=LR, clip_norm=clip_norm, clip_scope=clip_scope,
                                 options={"momentum": momentum} if momentum else {})
        self.workers = [Worker(i, copy.deepcopy(model), config, seed=0) for i in range(n)]
        d = self.workers[0].params.numel()
        self.start = spread * torch.randn(n, d, generator=gen)
        for w in self.workers:
            w.params.copy_(self.start[w.id])
        self.A = torch.randn(n, d, d, generator=gen) / d ** 0.5
        self.c = torch.randn(n, d, generator=gen)
        self.calls = 0
        self.ring = topologies.ring(n)
        self.W = torch.tensor(self.ring.W, dtype=torch.float64)

    def compute_gradients(self) -> None:
        self.calls += 1
        for w in self.workers:
            w.grads.copy_(self.A[w.id] @ w.params + self.c[w.id])

    def gradient(self, X: torch.Tensor) -> torch.Tensor:
        """The reference's ``g_i(x_i)`` for every row of ``X`` (float64)."""
        return torch.einsum("ide,ie->id", self.A.double(), X) + self.c.double()

    def run(self, algorithm_class: type, **options: object) -> torch.Tensor:
        options = algorithm_class.Options(**options)
        algorithm = algorithm_class(self.ring, Network(self.ring.n), self.workers, options=options, seed=0)
        for t in range(STEPS):
            algorithm.step(t, LR, self.compute_gradients)
        assert self.calls == STEPS  # compute_gradients exactly once per step
        return torch.stack([w.params for w in self.workers]).double()

    def tensors(self, X: torch.Tensor) -> list[torch.Tensor]:
        """``X``'s columns split per parameter tensor (the weight, then the bias)."""
        return list(X.split([v.numel() for v in self.workers[0].views], dim=1))


def sign_norm(V: torch.Tensor, problem: Problem) -> torch.Tensor:
    """The sign+norm codec per worker and parameter tensor: ``‖v‖₁/d · sign(v)`` (+1 at 0)."""
    parts = []
    for part in problem.tensors(V):
        assert part.abs().min() > 1e-4  # no sign sits on the edge of float32 rounding
        scale = part.abs().sum(1, keepdim=True) / part.shape[1]
        parts.append(scale * torch.where(part >= 0, 1.0, -1.0).double())
    return torch.cat(parts, dim=1)


def in_order(order: str, problem: Problem, X: torch.Tensor, gossip) -> torch.Tensor:
    """One step of the skeleton: ``opt(x + gossip(x), g(x))`` or ``x½ = opt(x, g(x))`` then gossip."""
    G = problem.gradient(X)
    if order == "overlap":
        return gossip(X.clone()) - LR * G
    return gossip(X - LR * G)


def reference(order: str, problem: Problem, gossip) -> torch.Tensor:
    """``STEPS`` steps of :func:`in_order` from the problem's starting points."""
    X = problem.start.double()
    for _ in range(STEPS):
        X = in_order(order, problem, X, gossip)
    return X


@pytest.mark.parametrize("order", ORDERS)
def test_dpsgd(order):
    problem = Problem()
    X = reference(order, problem, lambda V: problem.W @ V)
    torch.testing.assert_close(problem.run(DPSGD, order=order), X, **TOLERANCE)


@pytest.mark.parametrize("order", ORDERS)
def test_choco_sign(order):
    problem, gamma = Problem(), 0.4
    public = torch.zeros_like(problem.start, dtype=torch.float64)
    mixed_public = torch.zeros_like(public)

    def gossip(V: torch.Tensor) -> torch.Tensor:
        q = sign_norm(V - public, problem)
        public.add_(q)
        mixed_public.add_(problem.W @ q)
        return V + gamma * (mixed_public - public)

    X = reference(order, problem, gossip)
    torch.testing.assert_close(problem.run(Choco, order=order, codec="sign", gamma=gamma), X, **TOLERANCE)


@pytest.mark.parametrize("order", ORDERS)
def test_deepsqueeze_sign(order):
    problem, gamma = Problem(), 0.3
    error = torch.zeros_like(problem.start, dtype=torch.float64)

    def gossip(V: torch.Tensor) -> torch.Tensor:
        v = V + error
        c = sign_norm(v, problem)
        error.copy_(v - c)
        return V + gamma * (problem.W @ c - c)

    X = reference(order, problem, gossip)
    torch.testing.assert_close(problem.run(DeepSqueeze, order=order, codec="sign", gamma=gamma), X, **TOLERANCE)


@pytest.mark.parametrize("order", ORDERS)
def test_moniqua(order):
    """Moniqua's messages are stochastically rounded, so the reference recovers every neighbour
    exactly (``x̂_{j|i} = x_j`` and ``ê_i = 0``, true while neighbours are within θ) and the
    implementation may differ by the quantisation: each received residue and the worker's own are
    off by less than one level ``B·δ``, so one step moves ``x_i`` by at most
    ``γ Σ_{j≠i} w_ij · 2Bδ`` from the reference. Each step is compared from the implementation's
    own state (Moniqua keeps none besides ``x``)."""
    problem, gamma, theta, bits = Problem(spread=0.25), 1.0, 1.0, 8
    options = Moniqua.Options(order=order, theta=theta, bits=bits, gamma=gamma)
    algorithm = Moniqua(problem.ring, Network(N), problem.workers, options=options, seed=0)
    B, delta = options.modulus, 1 / (2 ** bits - 1)
    bound = gamma * (2 / 3) * 2 * B * delta
    for t in range(STEPS):
        X = torch.stack([w.params for w in problem.workers]).double()
        assert (X[:, None] - X[None]).abs().max() < theta  # the recovery condition holds
        expected = in_order(order, problem, X, lambda V: V + gamma * (problem.W @ V - V))
        algorithm.step(t, LR, problem.compute_gradients)
        got = torch.stack([w.params for w in problem.workers]).double()
        assert (got - expected).abs().max() <= bound + 1e-5
        other = in_order(ORDERS[1 - ORDERS.index(order)], problem, X, lambda V: V + gamma * (problem.W @ V - V))
        assert (other - expected).abs().max() > 5 * bound  # the other order is told apart


@pytest.mark.parametrize("order", ORDERS)
def test_powergossip(order):
    """The composition of PowerGossip's rounds with the gradient step: the rounds are a twin
    PowerGossip stepped with no gradient (its per-round rule has its own independent reference
    in test_powergossip.py), fed ``x^t`` (overlap) or ``x^t − η g(x^t)`` (step_first)."""
    problem = Problem()
    twin_problem = Problem()
    twin = PowerGossip(twin_problem.ring, Network(N), twin_problem.workers,
                       options=PowerGossip.Options(iterations=2), seed=0)

    def gossip(V: torch.Tensor) -> torch.Tensor:
        for w in twin_problem.workers:
            w.params.copy_(V[w.id])
        twin.step(0, LR, lambda: [w.grads.zero_() for w in twin_problem.workers])
        return torch.stack([w.params for w in twin_problem.workers]).double()

    X = reference(order, problem, gossip)
    got = problem.run(PowerGossip, order=order, iterations=2)
    torch.testing.assert_close(got, X, **TOLERANCE)
    assert not torch.allclose(got, problem.W @ got)  # rank 1 is not exact averaging: a real test


@pytest.mark.parametrize("order", ORDERS)
def test_gradient_tracking(order):
    """``y^t = W y^{t-1} + g^t − g^{t-1}`` from zeros; DIGing ``x = W x − η y`` (overlap) or DSGT
    ``x = W (x − η y)`` (step_first)."""
    problem = Problem(n=N_SPARSE)
    X, Y = problem.start.double(), torch.zeros(N_SPARSE, problem.start.shape[1], dtype=torch.float64)
    previous = torch.zeros_like(Y)
    for _ in range(STEPS):
        G = problem.gradient(X)
        Y, previous = problem.W @ Y + G - previous, G
        X = problem.W @ X - LR * Y if order == "overlap" else problem.W @ (X - LR * Y)
    torch.testing.assert_close(problem.run(GradientTracking, order=order), X, **TOLERANCE)


@pytest.mark.parametrize("order", ORDERS)
def test_gradient_tracking_on_a_graph_that_changes_every_step(order):
    """On the one-peer exponential graph (4 workers, partners i XOR 1, i XOR 2, ...): the tracker is
    mixed with the previous step's W, ``y^t = W^{t-1} y^{t-1} + g^t − g^{t-1}``, then DIGing
    ``x = W^t x − η y`` (overlap) or DSGT ``x = W^t (x − η y)`` (step_first); 5 steps, so that every
    matching follows every other. Mixing the tracker with this step's W instead ends 0.05 away."""
    n, steps = 4, 5
    problem = Problem(n=n)
    schedule = topologies.build_schedule("one_peer_exponential", n)
    W = [torch.tensor(schedule(t).W, dtype=torch.float64) for t in range(steps)]
    X, Y = problem.start.double(), torch.zeros(n, problem.start.shape[1], dtype=torch.float64)
    previous = torch.zeros_like(Y)
    for t in range(steps):
        G = problem.gradient(X)
        Y, previous = W[max(t - 1, 0)] @ Y + G - previous, G
        X = W[t] @ X - LR * Y if order == "overlap" else W[t] @ (X - LR * Y)
    algorithm = GradientTracking(schedule, Network(n), problem.workers, options=GradientTracking.Options(order=order))
    for t in range(steps):
        algorithm.step(t, LR, problem.compute_gradients)
    torch.testing.assert_close(torch.stack([w.params for w in problem.workers]).double(), X, **TOLERANCE)


def test_d2():
    """``x^1 = W (x^0 − η g^0)``, then ``x^{t+1} = W (2 x^t − x^{t-1} − η g^t + η g^{t-1})``."""
    problem = Problem(n=N_SPARSE)
    X = problem.start.double()
    G = problem.gradient(X)
    X, previous, G_previous = problem.W @ (X - LR * G), X, G
    for _ in range(STEPS - 1):
        G = problem.gradient(X)
        X, previous, G_previous = problem.W @ (2 * X - previous - LR * G + LR * G_previous), X, G
    torch.testing.assert_close(problem.run(D2), X, **TOLERANCE)
    assert not torch.allclose(X, reference("step_first", Problem(n=N_SPARSE), lambda V: problem.W @ V))  # not D-PSGD


def test_d2_scales_its_correction_when_the_learning_rate_changes():
    """``x^{t+1} = W (x^t − η_t g^t + η_t g^{t-1} + (η_t / η_{t-1}) (x^t − x^{t-1}))`` for η = 0.1,
    0.05, 0.2, 0.2: the learning-rate-aware D², which is D² for a constant η."""
    rates = [0.1, 0.05, 0.2, 0.2]
    problem = Problem(n=N_SPARSE)
    X = problem.start.double()
    G = problem.gradient(X)
    X, previous, G_previous = problem.W @ (X - rates[0] * G), X, G
    for lr, previous_lr in zip(rates[1:], rates):
        G = problem.gradient(X)
        X, previous, G_previous = (problem.W @ (X - lr * G + lr * G_previous + lr / previous_lr * (X - previous)),
                                   X, G)
    algorithm = D2(problem.ring, Network(problem.ring.n), problem.workers)
    for t, lr in enumerate(rates):
        algorithm.step(t, lr, problem.compute_gradients)
    torch.testing.assert_close(torch.stack([w.params for w in problem.workers]).double(), X, **TOLERANCE)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("mu", [None, 0.5])
def test_qgm(order, mu):
    """``m = β m̂ + g``; D-PSGD with ``m`` for ``g``; ``m̂ = μ m̂ + (1 − μ)(x^t − x^{t+1})/η``."""
    beta = 0.9
    problem = Problem(momentum=beta, n=N_SPARSE)
    X, M_hat = problem.start.double(), torch.zeros(N_SPARSE, problem.start.shape[1], dtype=torch.float64)
    for _ in range(STEPS):
        M = beta * M_hat + problem.gradient(X)
        new = problem.W @ X - LR * M if order == "overlap" else problem.W @ (X - LR * M)
        M_hat = (beta if mu is None else mu) * M_hat + (1 - (beta if mu is None else mu)) * (X - new) / LR
        X = new
    options = {"order": order} if mu is None else {"order": order, "mu": mu}
    torch.testing.assert_close(problem.run(QGM, **options), X, **TOLERANCE)
    local_momentum = Problem(momentum=beta, n=N_SPARSE)
    assert not torch.allclose(local_momentum.run(DPSGD, order=order), X, atol=1e-3)  # not D-PSGD with momentum


def test_local():
    problem = Problem()
    X = problem.start.double()
    for _ in range(STEPS):
        X = X - LR * problem.gradient(X)
    torch.testing.assert_close(problem.run(Local), X, **TOLERANCE)


def clipped(G: torch.Tensor, norm: float) -> torch.Tensor:
    """Each row scaled to norm at most ``norm`` (torch's clip_grad_norm_ rule, with its 1e-6)."""
    return G * (norm / (G.norm(dim=-1, keepdim=True) + 1e-6)).clamp(max=1.0)


def allreduce_reference(problem: Problem, scope: str, clip: float) -> torch.Tensor:
    X = problem.start.double()
    for _ in range(STEPS):
        G = problem.gradient(X)
        assert (G.norm(dim=1) > clip).all()  # clipping binds for every worker
        X = X - LR * (clipped(G, clip).mean(0) if scope == "worker" else clipped(G.mean(0), clip))
    return X


@pytest.mark.parametrize("scope", ["worker", "mean"])
def test_allreduce_clips_each_gradient_or_the_mean(scope):
    clip = 0.5
    problem = Problem(clip_norm=clip, clip_scope=scope)
    expected = allreduce_reference(problem, scope, clip)
    other = allreduce_reference(problem, "mean" if scope == "worker" else "worker", clip)
    assert (expected - other).abs().max() > 1e-3  # the two scopes are told apart
    torch.testing.assert_close(problem.run(AllReduce), expected, **TOLERANCE)


@pytest.mark.parametrize("order", ORDERS)
def test_choco_identity_with_gamma_1_is_dpsgd(order):
    """x̂ = x after every step and s = Σ_j w_ij x_j, so x + (s − x̂) is D-PSGD's mix: equal up to
    the float32 rounding of accumulating s (5 steps of values of order 1)."""
    steps = 5
    runs = []
    for algorithm_class, options in [(DPSGD, {}), (Choco, {"codec": "identity", "gamma": 1.0})]:
        problem = Problem()
        algorithm = algorithm_class(problem.ring, Network(N), problem.workers,
                                    options=algorithm_class.Options(order=order, **options), seed=0)
        trajectory = []
        for t in range(steps):
            algorithm.step(t, LR, problem.compute_gradients)
            trajectory.append(torch.stack([w.params.clone() for w in problem.workers]))
        runs.append(torch.stack(trajectory))
    torch.testing.assert_close(runs[1], runs[0], atol=1e-6, rtol=1e-6)
