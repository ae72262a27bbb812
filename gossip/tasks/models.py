"""The models of the PowerGossip paper's experiments: a word-level LSTM language model and
ResNet-20 for CIFAR-10."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

Hidden = tuple[torch.Tensor, torch.Tensor]


class LSTMLanguageModel(nn.Module):
    """Embedding → multi-layer LSTM → decoder, with the decoder tied to the embedding.

    The paper's model: 3 layers, embedding = hidden = 650, dropout 0.4, encoder and decoder
    initialised uniformly in ±0.1. Tying needs ``embed_dim == hidden``.

    >>> model = LSTMLanguageModel(vocab_size=100, embed_dim=16, hidden=16, layers=2)
    >>> logits, state = model(torch.zeros(5, 3, dtype=torch.long))
    >>> tuple(logits.shape), tuple(state[0].shape)
    ((5, 3, 100), (2, 3, 16))
    """

    def __init__(self, vocab_size: int, embed_dim: int = 650, hidden: int = 650, layers: int = 3,
                 dropout: float = 0.4, tied: bool = True) -> None:
        super().__init__()
        if tied and embed_dim != hidden:
            raise ValueError(f"a tied decoder needs embed_dim == hidden, got {embed_dim} and {hidden}")
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(vocab_size, embed_dim)
        self.rnn = nn.LSTM(embed_dim, hidden, layers, dropout=dropout if layers > 1 else 0.0)
        self.decoder = nn.Linear(hidden, vocab_size)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        if tied:
            self.decoder.weight = self.encoder.weight
        else:
            nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def forward(self, tokens: torch.Tensor, state: Hidden | None = None) -> tuple[torch.Tensor, Hidden]:
        """``tokens`` is ``time × batch``; returns logits ``time × batch × vocab`` and the new state."""
        output, state = self.rnn(self.drop(self.encoder(tokens)), state)
        return self.decoder(self.drop(output)), state


def norm_layer(kind: Literal["batch", "group"], channels: int) -> nn.Module:
    """BatchNorm (running statistics stay local to a worker) or GroupNorm (no statistics)."""
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.GroupNorm(min(8, channels // 2), channels)


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with a residual connection; a 1×1 convolution + norm shortcut when
    the block changes resolution or width."""

    def __init__(self, inputs: int, outputs: int, stride: int, norm: Literal["batch", "group"]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.norm1 = norm_layer(norm, outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.norm2 = norm_layer(norm, outputs)
        self.shortcut = nn.Identity()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride, bias=False), norm_layer(norm, outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(out)) + self.shortcut(x))


class ResNet20(nn.Module):
    """ResNet-20 for 32×32 images: 3 stages × 3 basic blocks, widths 16/32/64 (272,474 parameters
    with BatchNorm).

    >>> sum(p.numel() for p in ResNet20().parameters())
    272474
    """

    def __init__(self, classes: int = 10, norm: Literal["batch", "group"] = "batch") -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.norm = norm_layer(norm, 16)
        blocks = []
        inputs = 16
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            for index in range(3):
                blocks.append(BasicBlock(inputs, width, stride if index == 0 else 1, norm))
                inputs = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.blocks(F.relu(self.norm(self.conv(images))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))
