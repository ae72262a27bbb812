"""Random batches in the shapes of a real task, for benchmarks: the LSTM language model, ResNet-20
or an MLP, trained on a few random batches per worker that are drawn once and cycled, so that a
step's time is the model's and the algorithm's, with no data on disk and no data loading."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from gossip.registry import option
from gossip.comm.seeding import generator
from gossip.tasks.base import DataStream, Task
from gossip.tasks.language import language_model_loss
from gossip.tasks.models import LSTMLanguageModel, ResNet20


@dataclass
class RandomBatchesOptions:
    """A model of the paper (or an MLP) on random batches of its input shape."""

    name: Literal["random"] = option("random", help="random batches in the shapes of a model (benchmarks)")
    model: Literal["lstm", "resnet20", "mlp"] = option("lstm", help="lstm | resnet20 | mlp")
    vocabulary: int = option(33_278, help="lstm: vocabulary size", ge=2)
    hidden: int = option(650, help="lstm: embedding and hidden size (tied decoder)", ge=1)
    layers: int = option(3, help="lstm: LSTM layers", ge=1)
    bptt: int = option(30, help="lstm: tokens per sequence", ge=1)
    dropout: float = option(0.4, help="lstm: dropout", ge=0, lt=1)
    widths: list[int] = option([784, 1024, 1024, 10], help="mlp: layer widths, input first, classes last")
    batches: int = option(2, help="random batches per worker, cycled", ge=1)

    def check(self, config: Any) -> None:
        if self.model == "mlp" and (len(self.widths) < 2 or min(self.widths) < 1):
            raise ValueError(f"widths: {self.widths} needs an input and an output width, each >= 1")


class BatchCycle(DataStream):
    """A fixed list of batches, in turn."""

    def __init__(self, batches: list[tuple[torch.Tensor, ...]]) -> None:
        self.batches, self.position = batches, 0

    def next(self) -> tuple[torch.Tensor, ...]:
        batch = self.batches[self.position]
        self.position = (self.position + 1) % len(self.batches)
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = state["position"]


class RandomBatchesTask(Task):
    Options = RandomBatchesOptions

    def build_model(self) -> nn.Module:
        opts = self.options
        if opts.model == "lstm":
            return LSTMLanguageModel(opts.vocabulary, opts.hidden, opts.hidden, opts.layers, opts.dropout)
        if opts.model == "resnet20":
            return ResNet20()
        layers: list[nn.Module] = []
        for inputs, outputs in zip(opts.widths[:-1], opts.widths[1:]):
            layers += [nn.Linear(inputs, outputs), nn.ReLU()]
        return nn.Sequential(*layers[:-1])

    def steps_per_epoch(self) -> int:
        return self.options.batches

    def batch(self, gen: torch.Generator, restart: bool) -> tuple[torch.Tensor, ...]:
        """One random batch of the model's input shape."""
        opts, size = self.options, self.batch_size
        if opts.model == "lstm":
            tokens = torch.randint(opts.vocabulary, (opts.bptt + 1, size), generator=gen)
            return tokens[:-1], tokens[1:], torch.tensor(restart)
        shape, classes = ((3, 32, 32), 10) if opts.model == "resnet20" else ((opts.widths[0],), opts.widths[-1])
        return torch.randn(size, *shape, generator=gen), torch.randint(classes, (size,), generator=gen)

    def stream(self, worker: int) -> DataStream:
        gen = generator(self.seed, "random batches", worker)
        return BatchCycle([self.batch(gen, restart=k == 0) for k in range(self.options.batches)])

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...], memory: dict[str, Any]) -> torch.Tensor:
        if self.options.model == "lstm":
            return language_model_loss(model, batch, memory)
        inputs, labels = batch
        return F.cross_entropy(model(inputs), labels)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, full: bool = True) -> dict[str, float]:
        """The loss on a random batch of its own (there is nothing to learn)."""
        device = next(model.parameters()).device
        batch = tuple(t.to(device) for t in self.batch(generator(self.seed, "random batches", "eval"), True))
        return {"loss": self.loss(model, batch, {}).item()}
