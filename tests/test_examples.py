"""The examples of a user's own task and algorithm (examples/): each trains a few steps from its
YAML file, a run of one resumes, and the algorithm counts its bytes exactly and keeps the average."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml
from torch import nn

import topologies
from examples.my_algorithm.algorithm import MixingDPSGD, MixingDPSGDOptions
from gossip.config import OptimizerConfig
from gossip.comm.messages import Network
from gossip.algorithms.worker import Worker

from conftest import ROOT, read_metrics, run_cli

CONFIGS = sorted(ROOT.glob("examples/*/config.yaml"))
FEW = ["--set", "train.epochs=null", "--set", "train.steps=3", "--set", "train.eval_every=3",
       "--set", "train.local_eval=false", "--no-progress"]


@pytest.mark.parametrize("config", CONFIGS, ids=[c.parent.name for c in CONFIGS])
def test_example_trains_a_few_steps_from_its_yaml(config, tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(["--config", str(config), "--run-dir", str(run_dir), *FEW], cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert [r["step"] for r in read_metrics(run_dir)] == [3]
    written, saved = yaml.safe_load(config.read_text()), yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["task"]["name"] == written["task"]["name"]
    assert saved["algorithm"]["name"] == written["algorithm"]["name"]


def test_a_run_of_the_user_algorithm_resumes_under_two_processes(tmp_path):
    """torchrun's processes import the class by the same path, and resuming compares the saved
    config, which names it."""
    config, run_dir = ROOT / "examples/my_algorithm/config.yaml", tmp_path / "run"
    first = run_cli(["--config", str(config), "--run-dir", str(run_dir), "--set", "workers=4", *FEW], cwd=ROOT)
    assert first.returncode == 0, first.stderr
    again = run_cli(["--resume", str(run_dir), "--set", "train.steps=5", "--no-progress"], cwd=ROOT, torchrun=2)
    assert again.returncode == 0, again.stderr
    assert [r["step"] for r in read_metrics(run_dir)] == [3, 5]


def make_workers(n: int) -> list[Worker]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2))
    workers = [Worker(i, copy.deepcopy(model), OptimizerConfig(lr=0.1), seed=0) for i in range(n)]
    for w in workers:
        w.params.add_(torch.randn(w.params.shape))
    return workers


def no_gradient() -> None:
    """A step with zero gradients: the step is pure gossip."""


def test_bytes_per_step_is_what_the_network_counts():
    topology = topologies.star(5)  # degrees 4 and 1
    workers, network = make_workers(5), Network(5)
    algorithm = MixingDPSGD(topology, network, workers, MixingDPSGDOptions(gamma=0.3))
    for t in range(3):
        algorithm.step(t, 0.1, no_gradient)
    shapes = [v.shape for v in workers[0].views]
    assert network.bytes_sent == [3 * MixingDPSGD.bytes_per_step(algorithm.options, shapes, topology, i)
                                  for i in range(5)]


@pytest.mark.parametrize("order", ["overlap", "step_first"])
def test_gossip_preserves_the_average_on_a_ring_and_moves_gamma_of_the_way(order):
    topology, gamma = topologies.ring(8), 0.3
    workers = make_workers(8)
    before = torch.stack([w.params for w in workers]).double()
    MixingDPSGD(topology, Network(8), workers, MixingDPSGDOptions(order=order, gamma=gamma)).step(0, 0.1, no_gradient)
    after = torch.stack([w.params for w in workers]).double()
    assert torch.allclose(after.mean(0), before.mean(0), atol=1e-6)
    W = torch.tensor(topology.W, dtype=torch.float64)
    assert torch.allclose(after, before + gamma * (W @ before - before), atol=1e-6)
