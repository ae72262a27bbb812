"""The local optimizer of a worker and the learning-rate schedule.

The optimizer works on a worker's flat parameter and gradient vectors: SGD with heavy-ball or
Nesterov momentum, weight decay and gradient-norm clipping. Momentum buffers stay local: they are
never communicated.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Literal, Optional

import torch

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


class LocalSGD:
    """SGD on one worker's flat vectors; ``decay_mask`` is 1 where weight decay applies."""

    def __init__(self, config: OptimizerConfig, decay_mask: torch.Tensor) -> None:
        self.config = config
        self.decay_mask = decay_mask
        self.momentum_buffer: torch.Tensor | None = None

    def clip_(self, grad: torch.Tensor) -> None:
        """Scale ``grad`` in place so that its norm is at most ``clip_norm`` (as torch's clip_grad_norm_)."""
        if self.config.clip_norm is not None:
            scale = self.config.clip_norm / (grad.norm() + 1e-6)
            grad.mul_(scale.clamp(max=1.0))

    def step(self, params: torch.Tensor, grad: torch.Tensor, lr: float) -> None:
        """``params -= lr * direction(grad)`` in place; ``grad`` is decayed in place (clipping is
        the caller's :meth:`clip_`, so that all-reduce can clip before or after averaging)."""
        cfg = self.config
        if cfg.weight_decay:
            grad.addcmul_(params, self.decay_mask, value=cfg.weight_decay)
        direction = grad
        if cfg.momentum:
            if self.momentum_buffer is None:
                self.momentum_buffer = grad.clone()
            else:
                self.momentum_buffer.mul_(cfg.momentum).add_(grad)
            direction = grad.add(self.momentum_buffer, alpha=cfg.momentum) if cfg.nesterov else self.momentum_buffer
        params.add_(direction, alpha=-lr)

    def state_dict(self) -> dict:
        return {"momentum_buffer": self.momentum_buffer}

    def load_state_dict(self, state: dict) -> None:
        buffer = state["momentum_buffer"]
        self.momentum_buffer = None if buffer is None else buffer.to(self.decay_mask.device)


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
