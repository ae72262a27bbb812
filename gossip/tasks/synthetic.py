"""Small synthetic problems for tests, theory checks and a quick start: logistic regression and
least squares, with data generated per worker from ``(seed, worker)``.

Each worker's inputs are standard normal; its labels come from its own true model
``w_i = w* + heterogeneity · ξ_i`` (``heterogeneity = 0``: identically distributed workers).
The held-out set holds fresh samples of every worker's distribution, so the evaluation is the
average of the workers' objectives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from gossip.registry import option
from gossip.comm.seeding import generator
from gossip.tasks.base import DataStream, ShuffledBatches, Task


@dataclass
class SyntheticOptions:
    """A generated problem: linear or one-hidden-layer model on Gaussian inputs."""

    name: Literal["logistic", "least_squares"] = option("logistic", help="logistic | least_squares")
    dim: int = option(32, help="input dimension", ge=1)
    hidden: int = option(0, help="width of a hidden ReLU layer (0: a linear model)", ge=0)
    samples_per_worker: int = option(512, help="training examples per worker", ge=1)
    heterogeneity: float = option(0.0, help="spread of the workers' true models around a common one", ge=0)
    noise: float = option(0.1, help="label noise", ge=0)


class SyntheticTask(Task):
    Options = SyntheticOptions

    def __init__(self, options: SyntheticOptions, workers: int, seed: int, batch_size: int) -> None:
        super().__init__(options, workers, seed, batch_size)
        self.metric = "accuracy" if options.name == "logistic" else None
        truth = self._truth(generator(seed, "truth"))
        self.train_data = [self._sample(truth, worker, "train", options.samples_per_worker)
                           for worker in range(workers)]
        held_out = [self._sample(truth, worker, "eval", max(1, options.samples_per_worker // 4))
                    for worker in range(workers)]
        self.eval_data = tuple(torch.cat(parts) for parts in zip(*held_out))

    def _truth(self, gen: torch.Generator) -> torch.Tensor:
        return torch.randn(self.options.dim, generator=gen) / self.options.dim ** 0.5

    def _sample(self, truth: torch.Tensor, worker: int, split: str, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        opts = self.options
        gen = generator(self.seed, "synthetic", split, worker)
        own_truth = truth + opts.heterogeneity * self._truth(generator(self.seed, "truth", worker))
        inputs = torch.randn(count, opts.dim, generator=gen)
        targets = inputs @ own_truth + opts.noise * torch.randn(count, generator=gen)
        if opts.name == "logistic":
            targets = (targets > 0).float()
        return inputs, targets

    def build_model(self) -> nn.Module:
        opts = self.options
        if opts.hidden:
            return nn.Sequential(nn.Linear(opts.dim, opts.hidden), nn.ReLU(), nn.Linear(opts.hidden, 1))
        return nn.Linear(opts.dim, 1)

    def steps_per_epoch(self) -> int:
        return max(1, self.options.samples_per_worker // self.batch_size)

    def stream(self, worker: int) -> DataStream:
        return ShuffledBatches(self.train_data[worker], self.batch_size, self.seed, worker)

    def _loss(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        out = model(inputs).squeeze(-1)
        if self.options.name == "logistic":
            return F.binary_cross_entropy_with_logits(out, targets)
        return 0.5 * F.mse_loss(out, targets)

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...], memory: dict[str, Any]) -> torch.Tensor:
        inputs, targets = batch
        return self._loss(model, inputs, targets)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, full: bool = True) -> dict[str, float]:
        device = next(model.parameters()).device
        inputs, targets = (t.to(device) for t in self.eval_data)
        result = {"loss": self._loss(model, inputs, targets).item()}
        if self.metric == "accuracy":
            result["accuracy"] = ((model(inputs).squeeze(-1) > 0).float() == targets).float().mean().item()
        return result
