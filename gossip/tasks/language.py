"""Word-level language modelling: WikiText-2 (the paper's Table 1) and an offline corpus.

Text is split into words with ``<eos>`` at the end of every line; the vocabulary comes from the
training split. The training stream is cut into ``n`` contiguous shards, one per worker, fixed
for the whole run (the paper's strict partition); each shard is laid out as ``batch_size``
parallel columns read ``bptt`` tokens at a time, and the LSTM's hidden state is carried from one
batch to the next (detached) and reset at every epoch.

``corpus: wikitext2`` reads ``wiki.{train,valid,test}.tokens`` from ``data_dir`` (fetch them with
``python scripts/download_data.py wikitext2 --dir data/wikitext-2``). ``corpus: offline`` needs no
download: it is the text of Python's own help topics (``pydoc_data.topics``, part of every
CPython), lower-cased and split into words and punctuation, cut 80/10/10 into train, valid, test.
"""

from __future__ import annotations

import collections
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from gossip.registry import option
from gossip.tasks.base import DataError, DataStream, Task, TaskPlan
from gossip.tasks.models import LSTMLanguageModel

SPLITS = ("train", "valid", "test")
WIKITEXT2_VOCABULARY = 33_278  # the standard vocabulary size, for plans made without the data
WIKITEXT2_TRAIN_TOKENS = 2_088_628


@dataclass
class LanguageModelOptions:
    """The LSTM language model of the paper on WikiText-2 or on the offline corpus."""

    name: Literal["lstm"] = option("lstm", help="word-level LSTM language model")
    corpus: Literal["wikitext2", "offline"] = option("wikitext2", help="wikitext2 (data_dir) | offline "
                                                     "(Python's help topics, no download)")
    data_dir: str = option("data/wikitext-2", help="wikitext2: folder with wiki.{train,valid,test}.tokens")
    embed_dim: int = option(650, help="embedding size (= hidden: the decoder is tied)", ge=1)
    hidden: int = option(650, help="LSTM hidden size", ge=1)
    layers: int = option(3, help="LSTM layers", ge=1)
    dropout: float = option(0.4, help="dropout on embeddings, between layers and before the decoder", ge=0, lt=1)
    bptt: int = option(30, help="tokens per sequence (truncated backpropagation through time)", ge=1)
    eval_batch_size: int = option(10, help="parallel sequences when evaluating", ge=1)
    min_count: int = option(1, help="offline: words seen fewer times in train become <unk>", ge=1)

    def check(self, config: Any) -> None:
        if self.embed_dim != self.hidden:
            raise ValueError(f"embed_dim: {self.embed_dim} must equal hidden ({self.hidden}): the decoder is tied")


def tokenize_wikitext(text: str) -> list[list[str]]:
    """WikiText is tokenised already: words are separated by spaces; empty lines are dropped."""
    return [line.split() + ["<eos>"] for line in text.splitlines() if line.strip()]


def tokenize_plain(text: str) -> list[list[str]]:
    """Lower-cased words and single punctuation marks, ``<eos>`` per non-empty line."""
    return [re.findall(r"\w+|[^\w\s]", line.lower()) + ["<eos>"] for line in text.splitlines() if line.strip()]


def offline_text() -> dict[str, str]:
    """The offline corpus: Python's help topics, in a fixed order, cut 80/10/10 by lines."""
    from pydoc_data.topics import topics

    lines = [line for key in sorted(topics) for line in topics[key].splitlines() if line.strip()]
    cut1, cut2 = int(0.8 * len(lines)), int(0.9 * len(lines))
    parts = {"train": lines[:cut1], "valid": lines[cut1:cut2], "test": lines[cut2:]}
    return {split: "\n".join(part) for split, part in parts.items()}


def wikitext_text(data_dir: Path) -> dict[str, str]:
    """The three WikiText-2 splits, with a clear error when they are missing or empty."""
    files = {split: data_dir / f"wiki.{split}.tokens" for split in SPLITS}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise DataError(f"WikiText-2 not found: expected {', '.join(missing)}\n"
                        f"fetch it with: python scripts/download_data.py wikitext2 --dir {data_dir}\n"
                        f"or train offline with --set task.corpus=offline")
    texts = {split: path.read_text(encoding="utf-8", errors="replace") for split, path in files.items()}
    for split, text in texts.items():
        if not text.strip():
            raise DataError(f"{files[split]} is empty: a WikiText-2 token file holds text")
    return texts


class Vocabulary:
    """Word ↔ id, built from the training split (rare words → ``<unk>`` when ``min_count > 1``)."""

    def __init__(self, train: list[list[str]], min_count: int = 1) -> None:
        counts = collections.Counter(word for line in train for word in line)
        words = sorted(w for w, c in counts.items() if c >= min_count and w != "<unk>")
        self.words = ["<unk>"] + words
        self.index = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, lines: list[list[str]]) -> torch.Tensor:
        unknown = self.index["<unk>"]
        return torch.tensor([self.index.get(w, unknown) for line in lines for w in line], dtype=torch.long)


def shard(tokens: torch.Tensor, workers: int, worker: int) -> torch.Tensor:
    """Worker ``worker``'s contiguous share of ``tokens`` (equal lengths, the remainder dropped)."""
    length = len(tokens) // workers
    return tokens[worker * length:(worker + 1) * length]


def columns(tokens: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``tokens`` laid out as ``batch_size`` parallel columns: ``rows × batch_size``."""
    rows = len(tokens) // batch_size
    if rows < 2:
        raise DataError(f"{len(tokens)} tokens are too few for {batch_size} parallel sequences")
    return tokens[:rows * batch_size].view(batch_size, rows).t().contiguous()


class SequenceStream(DataStream):
    """``bptt``-long windows down a worker's columns; inputs and next-token targets."""

    def __init__(self, data: torch.Tensor, bptt: int) -> None:
        self.data, self.bptt = data, bptt
        self.position = 0

    def windows(self) -> int:
        return math.ceil((len(self.data) - 1) / self.bptt)

    def next(self) -> tuple[torch.Tensor, ...]:
        if self.position >= len(self.data) - 1:
            self.position = 0
        length = min(self.bptt, len(self.data) - 1 - self.position)
        start = self.position
        self.position += length
        restart = torch.tensor(start == 0)
        return self.data[start:start + length], self.data[start + 1:start + 1 + length], restart

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = state["position"]


def language_model_loss(model: nn.Module, batch: tuple[torch.Tensor, ...], memory: dict[str, Any],
                        label_smoothing: float = 0.0) -> torch.Tensor:
    """Next-token cross-entropy of a window ``(inputs, targets, restart)`` (with ``label_smoothing``
    as ``F.cross_entropy`` takes it); the hidden state is carried in ``memory`` from window to
    window and zeroed where ``restart`` is true."""
    inputs, targets, restart = batch
    state = memory.get("state")
    if state is not None:  # a zero state at an epoch's first window, without reading the flag on the host
        keep = (~restart).to(state[0].dtype)
        state = tuple(s * keep for s in state)
    logits, state = model(inputs, state)
    memory["state"] = tuple(s.detach() for s in state)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), label_smoothing=label_smoothing)


class LanguageModelTask(Task):
    Options = LanguageModelOptions
    metric = "perplexity"

    def __init__(self, options: LanguageModelOptions, workers: int, seed: int, batch_size: int) -> None:
        super().__init__(options, workers, seed, batch_size)
        texts = offline_text() if options.corpus == "offline" else wikitext_text(Path(options.data_dir))
        tokenize = tokenize_plain if options.corpus == "offline" else tokenize_wikitext
        lines = {split: tokenize(text) for split, text in texts.items()}
        self.vocabulary = Vocabulary(lines["train"], options.min_count)
        tokens = {split: self.vocabulary.encode(part) for split, part in lines.items()}
        self.train_tokens = len(tokens["train"])
        self.shards = [columns(shard(tokens["train"], workers, w), batch_size) for w in range(workers)]
        self.eval_data = {split: columns(tokens[split], options.eval_batch_size) for split in ("valid", "test")}

    @classmethod
    def plan(cls, options: LanguageModelOptions, workers: int, seed: int, batch_size: int) -> TaskPlan:
        """Without WikiText-2 on disk, the plan uses its standard vocabulary and length."""
        if options.corpus == "wikitext2" and not (Path(options.data_dir) / "wiki.train.tokens").is_file():
            vocabulary, tokens, note = WIKITEXT2_VOCABULARY, WIKITEXT2_TRAIN_TOKENS, \
                "standard WikiText-2 sizes (the data is not in data_dir)"
        else:
            task = cls(options, workers, seed, batch_size)
            vocabulary, tokens, note = len(task.vocabulary), task.train_tokens, ""
        rows = tokens // workers // batch_size
        return TaskPlan(cls.model_for(vocabulary, options), math.ceil((rows - 1) / options.bptt), note)

    def build_model(self) -> nn.Module:
        return self.model_for(len(self.vocabulary), self.options)

    @staticmethod
    def model_for(vocabulary: int, options: LanguageModelOptions) -> nn.Module:
        return LSTMLanguageModel(vocabulary, options.embed_dim, options.hidden, options.layers, options.dropout)

    def steps_per_epoch(self) -> int:
        return SequenceStream(self.shards[0], self.options.bptt).windows()

    def stream(self, worker: int) -> DataStream:
        return SequenceStream(self.shards[worker], self.options.bptt)

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...], memory: dict[str, Any]) -> torch.Tensor:
        return language_model_loss(model, batch, memory)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, full: bool = True) -> dict[str, float]:
        """Loss per token and perplexity on the valid split (``loss``) and, if ``full``, the test
        split (``test_loss``); the hidden state is carried through each split."""
        device = next(model.parameters()).device
        result = {}
        for split in ("valid", "test") if full else ("valid",):
            data, state, total = self.eval_data[split].to(device), None, torch.zeros((), device=device)
            for start in range(0, len(data) - 1, self.options.bptt):
                length = min(self.options.bptt, len(data) - 1 - start)
                logits, state = model(data[start:start + length], state)
                total += F.cross_entropy(logits.flatten(0, 1), data[start + 1:start + 1 + length].flatten(),
                                         reduction="sum")
            loss = total.item() / ((len(data) - 1) * data.shape[1])
            prefix = "" if split == "valid" else f"{split}_"
            result.update({f"{prefix}loss": loss, f"{prefix}perplexity": math.exp(min(loss, 50.0))})
        return result
