"""Built-ins changed by one method, with no options of their own: named by their import path, they
run with their parent's keys (``task: {name: examples.subclasses.components:SmoothedLanguageModel,
hidden: 64}`` takes every key of the built-in ``lstm`` task)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gossip.algorithms import PowerGossip
from gossip.tasks.language import LanguageModelTask, language_model_loss
from topologies import Topology


class SmoothedLanguageModel(LanguageModelTask):
    """The built-in LSTM language model, trained with label smoothing 0.1 (evaluated as before)."""

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...], memory: dict[str, Any]) -> torch.Tensor:
        return language_model_loss(model, batch, memory, label_smoothing=0.1)


class PowerGossipEveryOtherStep(PowerGossip):
    """PowerGossip that gossips on even steps only: half the bytes, a local step in between."""

    def finish_gossip(self, t: int, topology: Topology, pending: None) -> None:
        if t % 2 == 0:
            super().finish_gossip(t, topology, pending)

    @classmethod
    def bytes_per_step(cls, options: Any, shapes: list[torch.Size], topology: Topology, worker: int) -> float:
        """The mean over two steps (exact over any multiple of 4 steps)."""
        return super().bytes_per_step(options, shapes, topology, worker) / 2
