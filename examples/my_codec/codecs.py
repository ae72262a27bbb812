"""A message codec of your own: a frozen dataclass that subclasses ``gossip.algorithms.compression.Codec``;
its fields are its keys in the ``codec`` section. ChocoSGD and DeepSqueeze apply it to every
parameter tensor, and count exactly ``wire_bytes`` per tensor.

>>> import torch
>>> codec = HalfPrecision()
>>> x = torch.tensor([1.0, -2.5, 1e-4])
>>> codec.wire_bytes(3), codec.decode(codec.encode(x), x).tolist()
(6, [1.0, -2.5, 0.00010001659393310547])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from gossip.algorithms.compression import Codec


@dataclass(frozen=True, repr=False)
class HalfPrecision(Codec):
    """Every entry as an IEEE half-precision float: 2 bytes instead of 4."""

    name: ClassVar[str] = "half"

    def wire_bytes(self, numel: int) -> int:
        return 2 * numel

    def _encode(self, flat: torch.Tensor, generator: torch.Generator | None, out: torch.Tensor) -> None:
        out.view(torch.float16).copy_(flat)

    def _decode(self, wire: torch.Tensor, generator: torch.Generator | None, out: torch.Tensor) -> None:
        out.copy_(wire.view(torch.float16))
