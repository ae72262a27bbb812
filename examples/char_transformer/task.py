"""A character-level transformer language model, as a user's own task.

The text is the offline corpus of the built-in ``lstm`` task (Python's help topics, cut 80/10/10
into train, valid, test by :func:`gossip.tasks.language.offline_text`), read character by
character. Each worker holds a contiguous shard of the training characters, laid out as
``batch_size`` parallel columns and read ``context`` characters at a time, as the ``lstm`` task
lays out its words. The model is a small pre-norm transformer with causal self-attention and
learned positions; it carries no state from one window to the next. Run it with
``examples/char_transformer/config.yaml``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from gossip.registry import option
from gossip.tasks import DataStream, Task
from gossip.tasks.language import SequenceStream, columns, offline_text, shard


@dataclass
class CharTransformerOptions:
    """The model's size and the length of its windows."""

    name: str = option("examples.char_transformer.task:CharTransformerTask", help="the class, as module.path:Name")
    width: int = option(64, help="embedding width", ge=1)
    heads: int = option(4, help="attention heads (they divide width)", ge=1)
    layers: int = option(2, help="transformer blocks", ge=1)
    context: int = option(64, help="characters per window", ge=1)
    eval_batch_size: int = option(16, help="parallel sequences when evaluating", ge=1)

    def check(self, config: Any) -> None:
        """Refuse a width that the heads do not divide."""
        if self.width % self.heads:
            raise ValueError(f"heads: {self.heads} must divide width ({self.width})")


class CharTransformer(nn.Module):
    """Embedding and learned positions, ``layers`` causal pre-norm blocks, a linear decoder."""

    def __init__(self, vocabulary: int, options: CharTransformerOptions) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocabulary, options.width)
        self.position = nn.Embedding(options.context, options.width)
        block = nn.TransformerEncoderLayer(options.width, options.heads, 4 * options.width, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, options.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(options.width)
        self.decode = nn.Linear(options.width, vocabulary)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Next-character logits ``(batch, length, vocabulary)`` of ``tokens`` ``(batch, length)``."""
        length = tokens.shape[1]
        x = self.embed(tokens) + self.position(torch.arange(length, device=tokens.device))
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=tokens.device)
        return self.decode(self.norm(self.blocks(x, mask=mask, is_causal=True)))


def window_loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-character cross-entropy of a window laid out ``(length, batch)``."""
    logits = model(inputs.t())
    return F.cross_entropy(logits.flatten(0, 1), targets.t().flatten())


class CharTransformerTask(Task):
    """Character-level language modelling of the offline corpus with a small transformer."""

    Options = CharTransformerOptions
    metric = "perplexity"

    def __init__(self, options: CharTransformerOptions, workers: int, seed: int, batch_size: int) -> None:
        super().__init__(options, workers, seed, batch_size)
        texts = offline_text()
        self.characters = sorted(set(texts["train"]))  # index 0 is kept for characters unseen in train
        index = {c: i + 1 for i, c in enumerate(self.characters)}
        tokens = {split: torch.tensor([index.get(c, 0) for c in text]) for split, text in texts.items()}
        self.shards = [columns(shard(tokens["train"], workers, w), batch_size) for w in range(workers)]
        self.eval_data = {split: columns(tokens[split], options.eval_batch_size) for split in ("valid", "test")}

    def build_model(self) -> nn.Module:
        return CharTransformer(len(self.characters) + 1, self.options)

    def steps_per_epoch(self) -> int:
        return SequenceStream(self.shards[0], self.options.context).windows()

    def stream(self, worker: int) -> DataStream:
        return SequenceStream(self.shards[worker], self.options.context)

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...], memory: dict[str, Any]) -> torch.Tensor:
        inputs, targets, _ = batch  # the restart flag: no state is carried, nothing to reset
        return window_loss(model, inputs, targets)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, full: bool = True) -> dict[str, float]:
        """Loss per character and perplexity on the valid split (``loss``) and, if ``full``, on the
        test split (``test_loss``)."""
        device = next(model.parameters()).device
        result = {}
        for split in ("valid", "test") if full else ("valid",):
            stream = SequenceStream(self.eval_data[split].to(device), self.options.context)
            total = torch.zeros((), device=device)
            for _ in range(stream.windows()):
                inputs, targets, _ = stream.next()
                total += window_loss(model, inputs, targets) * targets.numel()
            loss = total.item() / ((len(stream.data) - 1) * stream.data.shape[1])
            prefix = "" if split == "valid" else f"{split}_"
            result.update({f"{prefix}loss": loss, f"{prefix}perplexity": math.exp(min(loss, 50.0))})
        return result
