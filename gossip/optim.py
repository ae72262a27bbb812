"""The local optimizer of a worker and the learning-rate schedule.

The config's optimizer is ``torch.optim.SGD`` with heavy-ball or Nesterov momentum and weight
decay (gradient-norm clipping is the worker's). Momentum buffers stay local: they are never
communicated.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import nn

from gossip.registry import option


@dataclass
class OptimizerConfig:
    """The local optimizer of every worker: SGD with momentum; momentum buffers stay local."""

    lr: float = option(0.1, help="base learning rate", gt=0)
    momentum: float = option(0.0, help="heavy-ball (or Nesterov) momentum", ge=0, lt=1)
    nesterov: bool = option(False, help="Nesterov momentum instead of heavy-ball")
    weight_decay: float = option(0.0, help="L2 weight decay on tensors with >1 dimension", ge=0)
    weight_decay_1d: bool = option(False, help="also decay 1-D tensors (biases, norm scales)")
    clip_norm: Optional[float] = option(None, help="clip each worker's gradient norm to this", gt=0)
    clip_scope: Literal["worker", "mean"] = option(
        "worker", help="allreduce: clip each worker's gradient before averaging (worker, as the "
                       "reference code does) or the averaged gradient (mean); the gossip algorithms "
                       "always clip each worker's own gradient")


@dataclass
class LRScheduleConfig:
    """Learning-rate schedule in epochs: linear warm-up from lr to lr*warmup_factor, step decays."""

    warmup_epochs: float = option(0.0, help="length of the linear warm-up", ge=0)
    warmup_factor: float = option(1.0, help="the LR after warm-up is lr * warmup_factor", gt=0)
    milestones: list[float] = option([], help="epochs at which the LR is multiplied by decay")
    decay: float = option(0.1, help="multiplier at each milestone", gt=0)


def build_sgd(config: OptimizerConfig, model: nn.Module) -> torch.optim.SGD:
    """``torch.optim.SGD`` over ``model``'s trainable parameters as ``config`` says: weight decay on
    tensors with more than one dimension (on all with ``weight_decay_1d``), heavy-ball or Nesterov
    momentum (clipping is the worker's, :meth:`gossip.worker.Worker.clip_grads_`)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decayed = [p for p in params if config.weight_decay_1d or p.dim() > 1]
    plain = [p for p in params if not (config.weight_decay_1d or p.dim() > 1)]
    groups = [{"params": group, "weight_decay": decay}
              for group, decay in ((decayed, config.weight_decay), (plain, 0.0)) if group]
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                           nesterov=config.nesterov and config.momentum > 0)


def lr_at(base_lr: float, lr_schedule: LRScheduleConfig, epoch: float) -> float:
    """The LR at (fractional) ``epoch``: linear warm-up from ``base_lr`` to ``base_lr * warmup_factor``
    over ``warmup_epochs``, then multiplied by ``decay`` at each milestone passed.

    >>> schedule = LRScheduleConfig(warmup_epochs=5, warmup_factor=11.0, milestones=[150, 225], decay=0.1)
    >>> [round(lr_at(0.1, schedule, epoch), 6) for epoch in (0, 2.5, 5, 149.9, 150, 224.9, 225)]
    [0.1, 0.6, 1.1, 1.1, 0.11, 0.11, 0.011]
    """
    peak = base_lr * lr_schedule.warmup_factor
    if epoch < lr_schedule.warmup_epochs:
        return base_lr + (peak - base_lr) * epoch / lr_schedule.warmup_epochs
    passed = bisect.bisect_right(sorted(lr_schedule.milestones), epoch)
    return peak * lr_schedule.decay ** passed
