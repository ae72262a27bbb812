"""Local SGD with no communication: every worker trains alone. The reference row that tells how
much of a step is communication (benchmarks) and how far the workers drift apart without it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch

from gossip.algorithms.base import Algorithm
from gossip.registry import option
from topologies import Topology


@dataclass
class LocalOptions:
    """Local SGD has no hyperparameters of its own."""

    name: Literal["local"] = option("local", help="local SGD: no communication at all")


class Local(Algorithm):
    Options = LocalOptions
    paper_orders = ()
    link_drop_refusal = "sends no messages, so there is no link to drop"

    @classmethod
    def bytes_per_step(cls, options: LocalOptions, shapes: list[torch.Size], topology: Topology, worker: int) -> int:
        return 0

    @classmethod
    def step_events(cls, options: LocalOptions) -> tuple[str, ...]:
        return ("compute",)

    def step(self, t: int, lr: float | None, compute_gradients: Callable[[], None]) -> None:
        self.gradient_step(lr, compute_gradients)
