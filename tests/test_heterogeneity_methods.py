"""The defining properties of the methods for heterogeneous data: gradient tracking and D² reach
the exact optimum at a constant step size where D-PSGD cannot, and their start-up checks.

The exactness runs train the synthetic least-squares task in float64 with full batches (exact
gradients), 7 workers on a ring (an even ring's W has the eigenvalue −1/3 that D² refuses), each worker's true model 1.0 apart from the common one, so that
each worker's own optimum is far from the global one."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import topologies
from gossip import OptimizerConfig
from gossip import config as config_module
from gossip.algorithms import ALGORITHMS, D2, DPSGD, QGM
from gossip.comm.messages import Network
from gossip.registry import ConfigError
from gossip.train.trainer import Trainer
from gossip.algorithms.worker import Worker

from conftest import ROOT, dry_run

WORKERS, SAMPLES, STEPS, LR = 7, 64, 400, 0.1


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def distance_to_optimum(algorithm: dict, lr_schedule: dict | None = None, topology: str = "ring",
                        workers: int = WORKERS, lr: float = LR) -> float:
    """The largest relative distance ``‖x_i − x*‖ / ‖x*‖`` over the workers after ``STEPS`` steps
    (one step per epoch: full batches)."""
    raw = dict(seed=0, workers=workers, topology={"name": topology}, algorithm=algorithm,
               lr_schedule=lr_schedule or {"name": "constant"},
               task={"name": "least_squares", "dim": 10, "samples_per_worker": SAMPLES, "heterogeneity": 1.0},
               optimizer={"lr": lr}, train={"steps": STEPS, "batch_size": SAMPLES, "eval_every": STEPS,
                                            "local_eval": False})
    trainer = Trainer(config_module.from_dict(raw), Network(workers), progress=False)
    inputs = torch.cat([torch.cat([x, torch.ones(len(x), 1)], 1) for x, _ in trainer.task.train_data])
    targets = torch.cat([y for _, y in trainer.task.train_data])
    optimum = torch.linalg.lstsq(inputs, targets[:, None]).solution[:, 0]  # Linear's weight, then its bias
    trainer.run()
    models = torch.stack([w.params for w in trainer.workers])
    assert models.dtype == torch.float64
    return ((models - optimum).norm(dim=1).max() / optimum.norm()).item()


@pytest.mark.parametrize("algorithm", [{"name": "gradient_tracking", "order": "overlap"},
                                       {"name": "gradient_tracking", "order": "step_first"},
                                       {"name": "d2"}], ids=["gt-overlap", "gt-step_first", "d2"])
def test_exact_optimum_at_a_constant_step_size_where_dpsgd_stalls(float64, algorithm):
    exact = distance_to_optimum(algorithm)
    dpsgd = distance_to_optimum({"name": "dpsgd", "order": algorithm.get("order", "step_first")})
    print(f"{algorithm}: {exact:.3g}; dpsgd at the same step size: {dpsgd:.3g}")
    assert exact < 1e-8
    assert dpsgd > 1e-3


@pytest.mark.parametrize("order", ["overlap", "step_first"])
def test_gradient_tracking_reaches_the_exact_optimum_on_a_graph_that_changes_every_step(float64, order):
    """DIGing and DSGT on the one-peer exponential graph of 8 workers, whose single W is disconnected."""
    exact = distance_to_optimum({"name": "gradient_tracking", "order": order}, topology="one_peer_exponential", workers=8)
    assert exact < 1e-8


def test_diging_diverges_where_dsgt_converges(float64):
    """At lr 0.2 on the same problem (spectral radius of DIGing's iteration 1.011), as the docs say."""
    assert distance_to_optimum({"name": "gradient_tracking", "order": "step_first"}, lr=0.2) < 1e-8
    assert distance_to_optimum({"name": "gradient_tracking", "order": "overlap"}, lr=0.2) > 1e3


@pytest.mark.parametrize("lr_schedule", [{"name": "warmup_step", "milestones": [300], "decay": 0.1},
                                         {"name": "cosine", "final_factor": 0.2}], ids=["step", "cosine"])
def test_d2_keeps_the_exact_optimum_under_a_learning_rate_schedule(float64, lr_schedule):
    """D²'s correction scaled by ``η_t / η_{t-1}``: a drop of η from 0.1 to 0.01 at step 300, or a
    cosine decay to 0.02, still ends at the exact optimum (measured: 9.7e-12 and 3.2e-9; the
    unscaled correction ends at 3.7e-5 and 1.4e-5)."""
    assert distance_to_optimum({"name": "d2"}, lr_schedule) < 1e-8


def linear_workers(n: int, optimizer: OptimizerConfig) -> list[Worker]:
    model = nn.Linear(3, 2)
    return [Worker(i, copy.deepcopy(model), optimizer, seed=0) for i in range(n)]


def test_d2_refuses_a_mixing_matrix_with_an_eigenvalue_at_or_below_minus_one_third():
    ring = topologies.ring(4, weights="max_degree")  # a pure swap with each side: eigenvalue -1
    with pytest.raises(ValueError, match=r"d2 needs the smallest eigenvalue of W above -1/3, but .* is -1\b"):
        D2(ring, Network(4), linear_workers(4, OptimizerConfig()))
    with pytest.raises(ValueError, match=r"is -0.3333"):  # an even ring with weights 1/3: on the boundary
        D2(topologies.ring(4), Network(4), linear_workers(4, OptimizerConfig()))
    D2(topologies.ring(5), Network(5), linear_workers(5, OptimizerConfig()))  # 1/3 + 2/3 cos(4π/5) = -0.206


@pytest.mark.parametrize("optimizer, message", [
    (OptimizerConfig(name="adamw"), "must be sgd with momentum > 0 .*got AdamW"),
    (OptimizerConfig(), "got SGD with momentum 0"),
    (OptimizerConfig(options={"momentum": 0.9, "dampening": 0.1}), "dampening 0; got dampening 0.1"),
])
def test_qgm_refuses_an_optimizer_without_heavy_ball_momentum(optimizer, message):
    with pytest.raises(ValueError, match=message):
        QGM(topologies.ring(4), Network(4), linear_workers(4, optimizer))


@pytest.mark.parametrize("optimizer, message", [
    ({"momentum": 0}, "got SGD with momentum 0"),
    ({"name": "adamw"}, "got AdamW"),
])
def test_qgm_refuses_the_configured_optimizer_before_the_run_starts(optimizer, message):
    raw = {"workers": 4, "algorithm": {"name": "qgm"}, "optimizer": {"lr": 0.1, **optimizer}, "train": {"steps": 1}}
    with pytest.raises(ConfigError, match=f"^algorithm.name: qgm replaces the momentum buffer .*{message}$"):
        config_module.from_dict(raw)
    config_module.from_dict({**raw, "optimizer": {"lr": 0.1, "momentum": 0.9}})


# (name, options): every method of this family, in each order it has
BYTES_VARIANTS = [("gradient_tracking", {"order": "overlap"}), ("gradient_tracking", {"order": "step_first"}),
                  ("d2", {}), ("qgm", {"order": "overlap"}), ("qgm", {"order": "step_first"})]


@pytest.mark.parametrize("name, options", BYTES_VARIANTS)
def test_the_network_counts_exactly_the_analytic_bytes(name, options):
    """Over 3 steps on a star (degrees 4 and 1): what every worker sent is 3 × ``bytes_per_step``,
    which is the dry run's figure; gradient tracking's is twice D-PSGD's."""
    topology = topologies.star(5)
    workers = linear_workers(5, OptimizerConfig(lr=0.1, options={"momentum": 0.9}))
    network = Network(5)
    algorithm_class = ALGORITHMS.entries[name]
    options_class = algorithm_class.Options
    algorithm = algorithm_class(topology, network, workers, options=options_class(name=name, **options))
    gen = torch.Generator().manual_seed(0)
    for t in range(3):
        algorithm.step(t, 0.1, lambda: [w.grads.copy_(torch.randn(w.grads.shape, generator=gen)) for w in workers])
    shapes = [v.shape for v in workers[0].views]
    analytic = [algorithm_class.bytes_per_step(algorithm.options, shapes, topology, i) for i in range(5)]
    assert network.bytes_sent == [3 * b for b in analytic]
    dpsgd = [DPSGD.bytes_per_step(None, shapes, topology, i) for i in range(5)]
    assert analytic == [(2 if name == "gradient_tracking" else 1) * b for b in dpsgd]


@pytest.mark.parametrize("name, factor", [("gradient_tracking", 2), ("d2", 1), ("qgm", 1)])
def test_the_dry_run_prints_the_bytes(capsys, name, factor):
    printed, parameters = dry_run(["--config", str(ROOT / "configs/logistic.yaml"), "--set", f"algorithm.name={name}",
                                   "--set", "workers=5"], capsys)  # a ring of 5: D²'s eigenvalue condition holds
    assert f"worker 0 sends {factor * 2 * 4 * parameters:,} B" in printed


def qgm_setting(name: str, seed: int) -> dict:
    """8 workers on a ring, synthetic classification (one hidden layer) with every worker's true
    model 1.0 apart, SGD with momentum 0.9 at lr 0.05, 300 steps of batch 32."""
    raw = dict(seed=seed, workers=8, topology={"name": "ring"}, algorithm={"name": name, "order": "step_first"},
               task={"name": "logistic", "dim": 32, "hidden": 16, "samples_per_worker": 1024, "heterogeneity": 1.0},
               optimizer={"lr": 0.05, "momentum": 0.9}, train={"steps": 300, "batch_size": 32, "eval_every": 300})
    return Trainer(config_module.from_dict(raw), Network(8), progress=False).run()


def test_quasi_global_momentum_beats_local_momentum_on_heterogeneous_data():
    """Averaged over 3 seeds, QGM's averaged model and its workers' own models both reach a lower
    held-out loss than D-PSGD with each worker's own heavy-ball momentum (measured 0.505 vs 0.518
    for the average, 0.505 vs 0.563 for the local models)."""
    runs = {name: [qgm_setting(name, seed) for seed in range(3)] for name in ("dpsgd", "qgm")}
    mean = {name: {key: sum(r[key] for r in records) / 3 for key in ("eval_loss", "local_eval_loss_mean")}
            for name, records in runs.items()}
    print(mean)
    assert mean["qgm"]["eval_loss"] < mean["dpsgd"]["eval_loss"]
    assert mean["qgm"]["local_eval_loss_mean"] < mean["dpsgd"]["local_eval_loss_mean"] - 0.02


@pytest.mark.parametrize("name, order, line", [
    ("dpsgd", "overlap", "overlap (its paper's order)"),
    ("choco", "overlap", "overlap (its paper's is step_first)"),
    ("qgm", "step_first", "step_first (its paper's order)"),
    ("sgp", "overlap", "overlap (its paper's is step_first)"),
    ("gradient_tracking", "step_first", "step_first (its paper's order)"),
    ("d2", None, "step_first (its only order, its paper's)"),
    ("allreduce", None, "no gossip round"),
])
def test_the_dry_run_prints_the_order_that_will_run_and_its_papers(capsys, name, order, line):
    sets = ["--set", f"algorithm.name={name}", "--set", "workers=5"] + (["--set", f"algorithm.order={order}"] if order else [])
    printed, _ = dry_run(["--config", str(ROOT / "configs/logistic.yaml"), *sets], capsys)
    assert f"\norder        {line}\n" in printed
