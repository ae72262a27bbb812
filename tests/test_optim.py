"""Optimizers and learning-rate schedules from the config: torch's classes as named, with
gossip's weight-decay groups, the built-in schedules' values, and one-line errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from torch import nn

from gossip import config as cfg
from gossip.algorithms.optim import LRSchedule
from gossip.registry import ConfigError
from gossip.train import main
from gossip.algorithms.worker import Worker

from conftest import ROOT


def parse(**sections) -> cfg.Config:
    return cfg.from_dict({"train": {"steps": 10}, **sections})


def lrs(schedule: dict, lr: float, steps_per_epoch: float, total_steps: int, steps: list[int]) -> list[float]:
    """The learning rate of each of ``steps`` under the ``lr_schedule`` section ``schedule``."""
    run = LRSchedule(parse(lr_schedule=schedule).lr_schedule, lr, steps_per_epoch, total_steps)
    values = []
    for t in range(max(steps) + 1):
        if t in steps:
            values.append(round(run.lr, 9))
        run.advance()
    return values


def test_sgd_with_nesterov_and_weight_decay_through_a_worker_is_torch_sgd():
    """Two steps: weight decay only on the 2-D weight, Nesterov momentum on both tensors."""
    config = parse(optimizer={"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01})
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    weight, bias = (p.detach().clone().requires_grad_() for p in model.parameters())
    reference = torch.optim.SGD([{"params": [weight], "weight_decay": 0.01}, {"params": [bias]}],
                                lr=0.1, momentum=0.9, nesterov=True)
    worker = Worker(0, model, config.optimizer, seed=0)
    for step in range(2):
        grads = torch.randn(worker.grads.numel())
        worker.grads.copy_(grads)
        worker.optimizer.step()
        weight.grad, bias.grad = grads[:6].view(2, 3), grads[6:]
        reference.step()
    torch.testing.assert_close(worker.params, torch.cat([weight.detach().reshape(-1), bias.detach()]), rtol=0, atol=0)


def test_adamw_from_yaml_decays_the_weights_but_not_the_1d_tensors():
    """With zero gradients AdamW only decays (decoupled: p *= 1 - lr * weight_decay)."""
    config = cfg.from_dict(yaml.safe_load(
        "train: {steps: 1}\noptimizer: {name: AdamW, lr: 0.1, weight_decay: 0.5, betas: [0.9, 0.95], eps: 1e-8}\n"))
    assert config.optimizer.options == {"betas": [0.9, 0.95], "eps": 1e-8}
    model = nn.Linear(3, 2)
    before = [p.detach().clone() for p in model.parameters()]
    worker = Worker(0, model, config.optimizer, seed=0)
    assert isinstance(worker.optimizer, torch.optim.AdamW)
    assert worker.optimizer.param_groups[0]["betas"] == (0.9, 0.95)
    worker.optimizer.step()
    weight, bias = model.parameters()
    torch.testing.assert_close(weight.detach(), before[0] * (1 - 0.1 * 0.5))
    assert torch.equal(bias.detach(), before[1])


def test_an_optimizer_section_survives_dump_and_load():
    config = parse(optimizer={"name": "adam", "lr": 0.01, "betas": [0.8, 0.9], "amsgrad": True},
                   lr_schedule={"name": "cosine", "warmup_epochs": 1})
    assert cfg.from_dict(yaml.safe_load(cfg.dump(config))) == config


@pytest.mark.parametrize("sections, expected", [
    ({"optimizer": {"name": "adamm"}}, "optimizer.name: unknown optimizer 'adamm' (did you mean 'Adam'?)"),
    ({"optimizer": {"name": "adamw", "betaz": [0.9, 0.9]}}, "optimizer.betaz: unknown key (did you mean 'betas'?)"),
    ({"optimizer": {"name": "adamw", "amsgrad": 1}}, "optimizer.amsgrad: expected true or false, got int 1"),
    ({"optimizer": {"name": "collections:OrderedDict"}}, "optimizer.name: collections:OrderedDict is not a subclass of torch.optim.optimizer.Optimizer"),
    ({"optimizer": {"name": "no_such_module:Opt"}}, "optimizer.name: no module named 'no_such_module' (from 'no_such_module:Opt')"),
    ({"optimizer": {"name": "torch.optim:Adamm"}}, "has no attribute 'Adamm' (did you mean 'Adam'?)"),
    ({"schedule": {"milestones": [1]}}, "schedule: renamed to lr_schedule (add name: warmup_step"),
    ({"lr_schedule": {"name": "ReduceLROnPlateau"}}, "lr_schedule.name: ReduceLROnPlateau needs a metric"),
    ({"lr_schedule": {"name": "StepLR", "step_sise": 2}}, "lr_schedule.step_sise: unknown key (did you mean 'step_size'?)"),
    ({"lr_schedule": {"name": "StepLR"}}, "lr_schedule.step_size: missing; StepLR requires it (it has no default)"),
    ({"lr_schedule": {"name": "cosine", "warmup_epoch": 1}}, "lr_schedule.warmup_epoch: unknown key"),
    ({"lr_schedule": {"name": "warmup_step", "decay": -1}}, "lr_schedule.decay: -1.0 is out of range"),
])
def test_optimizer_and_schedule_errors_are_one_line(sections, expected):
    with pytest.raises(ConfigError) as info:
        parse(**sections)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_warmup_step_values():
    """lr 0.1, 4 steps per epoch: up to 0.3 over 2 epochs (0.2 at epoch 1), x0.1 from epoch 5."""
    schedule = {"name": "warmup_step", "warmup_epochs": 2, "warmup_factor": 3, "milestones": [5], "decay": 0.1}
    assert lrs(schedule, 0.1, 4, 40, [0, 4, 8, 19, 20]) == [0.1, 0.2, 0.3, 0.3, 0.03]


def test_cosine_values():
    """lr 1, 4 steps per epoch, 20 steps: warm-up from 0.1 over epoch 1, then half a cosine to 0."""
    assert lrs({"name": "cosine", "warmup_epochs": 1}, 1.0, 4, 20, [0, 2, 4, 8, 12, 20]) == \
        [0.1, 0.55, 1.0, round(0.5 * (1 + math.cos(math.pi / 4)), 9), 0.5, 0.0]
    assert lrs({"name": "cosine", "final_factor": 0.2}, 1.0, 4, 20, [0, 10, 20]) == [1.0, 0.6, 0.2]


def test_no_lr_schedule_is_a_constant_learning_rate():
    assert lrs({}, 0.3, 4, 20, [0, 7, 19]) == [0.3, 0.3, 0.3]


def test_a_torch_scheduler_from_yaml_steps_once_per_step(tmp_path):
    run_dir = tmp_path / "run"
    assert main(["--config", str(ROOT / "configs/logistic.yaml"), "--run-dir", str(run_dir), "--no-progress",
                 "--set", "workers=2", "--set", "train.steps=7", "--set", "train.eval_every=1",
                 "--set", "lr_schedule={name: StepLR, step_size: 3, gamma: 0.5}"]) == 0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [round(r["lr"], 9) for r in records] == [0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025]
