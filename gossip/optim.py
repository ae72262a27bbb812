"""The local optimizer of a worker and the learning-rate schedule.

The optimizer works on a worker's flat parameter and gradient vectors: SGD with heavy-ball or
Nesterov momentum, weight decay and gradient-norm clipping. Momentum buffers stay local: they are
never communicated.
"""

from __future__ import annotations

import bisect

import torch

from gossip.config import OptimizerConfig, ScheduleConfig


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
        """``params -= lr * direction(grad)`` in place; ``grad`` is clipped and decayed in place."""
        cfg = self.config
        self.clip_(grad)
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


def learning_rate(base_lr: float, schedule: ScheduleConfig, epoch: float) -> float:
    """The LR at (fractional) ``epoch``: linear warm-up from ``base_lr`` to ``base_lr * warmup_factor``
    over ``warmup_epochs``, then multiplied by ``decay`` at each milestone passed.

    >>> schedule = ScheduleConfig(warmup_epochs=5, warmup_factor=11.0, milestones=[150, 225], decay=0.1)
    >>> [round(learning_rate(0.1, schedule, epoch), 6) for epoch in (0, 2.5, 5, 149.9, 150, 224.9, 225)]
    [0.1, 0.6, 1.1, 1.1, 0.11, 0.11, 0.011]
    """
    peak = base_lr * schedule.warmup_factor
    if epoch < schedule.warmup_epochs:
        return base_lr + (peak - base_lr) * epoch / schedule.warmup_epochs
    passed = bisect.bisect_right(sorted(schedule.milestones), epoch)
    return peak * schedule.decay ** passed
