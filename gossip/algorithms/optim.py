"""The local optimizer of a worker and the learning-rate schedule, both from ``torch.optim``.

``optimizer.name`` is a ``torch.optim`` class (``sgd``, ``adamw``, ``adam``, ``rmsprop``, ...,
by case-insensitive name) or any optimizer class as ``module.path:Class``; the section's other
keys are keywords of that class. Gossip adds ``weight_decay`` through two parameter groups (only
tensors with more than one dimension are decayed unless ``weight_decay_1d``) and gradient-norm
clipping (the worker's). Optimizer state (momentum buffers, Adam moments) stays local: it is never
communicated.

``lr_schedule.name`` is one of the built-in schedules (``warmup_step``, ``cosine``, in epochs)
or a ``torch.optim.lr_scheduler`` class (stepped once per training step, so its periods count
steps). Without an ``lr_schedule`` section the learning rate is constant.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal, Mapping, Optional

import torch
from torch import nn

from gossip.registry import ConfigError, Registry, check_keywords, keywords_field, option


@dataclass
class OptimizerConfig:
    """The local optimizer of every worker; its state (e.g. momentum buffers) stays local.

    ``options`` holds the class's own keywords (in YAML they are keys of the section), e.g.
    ``OptimizerConfig(name="sgd", lr=0.1, options={"momentum": 0.9, "nesterov": True})``."""

    name: str = option("sgd", help="a torch.optim class by case-insensitive name (sgd, adamw, adam, rmsprop, "
                                   "adagrad, ...) or module.path:Class")
    lr: float = option(0.1, help="base learning rate", gt=0)
    weight_decay: float = option(0.0, help="weight decay on tensors with >1 dimension, as the class applies "
                                           "it (L2 for sgd, decoupled for adamw)", ge=0)
    weight_decay_1d: bool = option(False, help="also decay 1-D tensors (biases, norm scales)")
    clip_norm: Optional[float] = option(None, help="clip each worker's gradient norm to this", gt=0)
    clip_scope: Literal["worker", "mean"] = option(
        "worker", help="allreduce: clip each worker's gradient before averaging (worker, as the "
                       "reference code does) or the averaged gradient (mean); the gossip algorithms "
                       "always clip each worker's own gradient")
    options: dict[str, Any] = keywords_field(
        help="any other key is a keyword of the optimizer class (momentum, nesterov, betas, eps, amsgrad, ...)")

    def check_keywords(self, path: str, parse_dataclass: Callable[[type, Any, str], Any]) -> None:
        """Resolve ``name`` and check the keywords by building the optimizer over one tensor."""
        cls = OPTIMIZERS.implementation(self.name, f"{path}name")
        check_keywords(cls, self, path, reserved=("params", "lr", "weight_decay"))
        if self.weight_decay and "weight_decay" not in inspect.signature(cls).parameters:
            raise ConfigError(f"{path}weight_decay: {cls.__name__} takes no weight_decay; allowed: 0")
        _try(lambda: build_optimizer(self, nn.Linear(1, 1)), path, cls.__name__)


# ---------------------------------------------------------------------------------------------
# Built-in schedules: multipliers of the base lr at a (fractional) epoch


@dataclass
class Constant:
    """The base learning rate at every step."""

    def __call__(self, epoch: float, total_epochs: float) -> float:
        return 1.0


@dataclass
class WarmupStep:
    """Linear warm-up from lr to lr * warmup_factor over warmup_epochs, then x decay at each milestone.

    >>> schedule = WarmupStep(warmup_epochs=5, warmup_factor=11.0, milestones=[150, 225], decay=0.1)
    >>> [round(0.1 * schedule(epoch, 300), 6) for epoch in (0, 2.5, 5, 149.9, 150, 224.9, 225)]
    [0.1, 0.6, 1.1, 1.1, 0.11, 0.11, 0.011]
    """

    warmup_epochs: float = option(0.0, help="length of the linear warm-up", ge=0)
    warmup_factor: float = option(1.0, help="the LR after warm-up is lr * warmup_factor", gt=0)
    milestones: list[float] = option([], help="epochs at which the LR is multiplied by decay")
    decay: float = option(0.1, help="multiplier at each milestone", gt=0)

    def __call__(self, epoch: float, total_epochs: float) -> float:
        if epoch < self.warmup_epochs:
            return 1.0 + (self.warmup_factor - 1.0) * epoch / self.warmup_epochs
        return self.warmup_factor * self.decay ** sum(epoch >= m for m in self.milestones)


@dataclass
class Cosine:
    """Linear warm-up from lr * warmup_start_factor to lr over warmup_epochs, then a half cosine
    down to lr * final_factor at the run's last step.

    >>> schedule = Cosine(warmup_epochs=2, warmup_start_factor=0.1, final_factor=0.0)
    >>> [round(schedule(epoch, 10), 6) for epoch in (0, 1, 2, 6, 10)]
    [0.1, 0.55, 1.0, 0.5, 0.0]
    """

    warmup_epochs: float = option(0.0, help="length of the linear warm-up", ge=0)
    warmup_start_factor: float = option(0.1, help="the warm-up starts at lr * warmup_start_factor", ge=0)
    final_factor: float = option(0.0, help="the LR at the last step is lr * final_factor", ge=0)

    def __call__(self, epoch: float, total_epochs: float) -> float:
        if epoch < self.warmup_epochs:
            return self.warmup_start_factor + (1.0 - self.warmup_start_factor) * epoch / self.warmup_epochs
        progress = min(1.0, (epoch - self.warmup_epochs) / max(total_epochs - self.warmup_epochs, 1e-12))
        return self.final_factor + (1.0 - self.final_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


#: The schedules that ``lr_schedule.name`` names besides torch's schedulers.
BUILTIN_SCHEDULES: dict[str, type] = {"constant": Constant, "warmup_step": WarmupStep, "cosine": Cosine}


@dataclass
class LRScheduleConfig:
    """The learning rate of every step: a built-in schedule or a torch.optim.lr_scheduler class."""

    name: str = option("constant", help="constant | warmup_step | cosine (in epochs), a "
                                        "torch.optim.lr_scheduler class by case-insensitive name (stepped "
                                        "once per step) or module.path:Class")
    options: dict[str, Any] = keywords_field(
        help="any other key is a keyword of the schedule: lr_schedule[NAME] below for the built-ins, the "
             "class's keywords for a torch scheduler (e.g. step_size and gamma of StepLR)")
    BUILTINS: ClassVar[dict[str, type]] = BUILTIN_SCHEDULES

    def check_keywords(self, path: str, parse_dataclass: Callable[[type, Any, str], Any]) -> None:
        """Resolve ``name`` and check the keywords (a built-in's as typed config keys) by building
        the schedule for a short run."""
        cls = BUILTIN_SCHEDULES.get(self.name.lower())
        if cls is not None:
            parsed = parse_dataclass(cls, self.options, path)
            self.options = {k: getattr(parsed, k) for k in self.options}
        else:
            cls = scheduler_class(self.name, f"{path}name")
            check_keywords(cls, self, path, reserved=("optimizer", "last_epoch"))
        _try(lambda: LRSchedule(self, lr=1.0, steps_per_epoch=10, total_steps=100), path, cls.__name__)


class LRSchedule:
    """Step t's learning rate: a torch scheduler over a private one-parameter optimizer whose lr
    is the run's (the built-ins are ``LambdaLR`` multipliers at epoch t / steps_per_epoch).

    :attr:`lr` is the current step's learning rate, :meth:`advance` moves to the next step, and
    :meth:`state_dict` / :meth:`load_state_dict` carry the position across a resume."""

    def __init__(self, config: LRScheduleConfig, lr: float, steps_per_epoch: float, total_steps: int) -> None:
        self._optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
        builtin = BUILTIN_SCHEDULES.get(config.name.lower())
        if builtin is not None:
            multiplier = builtin(**config.options)
            total_epochs = total_steps / steps_per_epoch
            self._scheduler: Any = torch.optim.lr_scheduler.LambdaLR(
                self._optimizer, lambda step: multiplier(step / steps_per_epoch, total_epochs))
        else:
            cls = scheduler_class(config.name, "lr_schedule.name")
            self._scheduler = cls(self._optimizer, **_torch_values(config.options))

    @property
    def lr(self) -> float:
        """The learning rate of the current step."""
        return float(self._optimizer.param_groups[0]["lr"])

    def advance(self) -> None:
        """Move to the next step (the private optimizer's parameter has no gradient: its step is empty)."""
        self._optimizer.step()
        self._scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return {"scheduler": self._scheduler.state_dict(), "optimizer": self._optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._scheduler.load_state_dict(state["scheduler"])
        self._optimizer.load_state_dict(state["optimizer"])


# ---------------------------------------------------------------------------------------------
# Building


def build_optimizer(config: OptimizerConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer that ``config`` names over ``model``'s trainable parameters, in two parameter
    groups: weight decay on tensors with more than one dimension (on all with ``weight_decay_1d``)
    and none on the others (clipping is the worker's, :meth:`gossip.algorithms.worker.Worker.clip_grads_`)."""
    cls = OPTIMIZERS.implementation(config.name, "optimizer.name")
    params = [p for p in model.parameters() if p.requires_grad]
    decayed = [p for p in params if config.weight_decay_1d or p.dim() > 1]
    plain = [p for p in params if not (config.weight_decay_1d or p.dim() > 1)]
    if "weight_decay" in inspect.signature(cls).parameters:
        groups = [{"params": group, "weight_decay": decay}
                  for group, decay in ((decayed, config.weight_decay), (plain, 0.0)) if group]
    else:
        groups = [{"params": params}]
    return cls(groups, lr=config.lr, **_torch_values(config.options))


#: The optimizers by name: every ``torch.optim`` class, or ``module.path:Class``.
OPTIMIZERS = Registry("optimizer", torch.optim.Optimizer, torch_module=torch.optim)
#: The learning-rate schedules by name: the built-ins, every ``torch.optim.lr_scheduler`` class, or
#: ``module.path:Class``.
LR_SCHEDULES = Registry("lr_schedule", torch.optim.lr_scheduler.LRScheduler, torch_module=torch.optim.lr_scheduler)
for _name, _schedule in BUILTIN_SCHEDULES.items():
    LR_SCHEDULES.register(_name, _schedule)


def scheduler_class(name: str, path: str) -> type:
    """The ``torch.optim.lr_scheduler`` class that ``name`` names; ``ReduceLROnPlateau`` is refused."""
    cls = LR_SCHEDULES.implementation(name, path)
    if issubclass(cls, torch.optim.lr_scheduler.ReduceLROnPlateau):
        raise ConfigError(f"{path}: ReduceLROnPlateau needs a metric that the training loop does not pass; "
                          f"use a schedule of the step (warmup_step, cosine, StepLR, ...)")
    return cls


def _try(build: Callable[[], Any], path: str, name: str) -> None:
    try:
        build()
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{path.rstrip('.')}: {name} refuses these keywords ({' '.join(str(exc).split())})") from None


def _torch_values(options: Mapping[str, Any]) -> dict[str, Any]:
    """The keywords as torch takes them: YAML lists (``betas: [0.9, 0.95]``) become tuples."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
