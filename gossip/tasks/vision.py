"""Image classification: ResNet-20 on CIFAR-10 (the paper's Table 2).

Reads the python-pickle batches of ``cifar-10-batches-py`` (``data_batch_1..5``, ``test_batch``;
fetch them with ``python scripts/download_data.py cifar10 --dir data/cifar-10-batches-py``). Training images get a
random 32×32 crop of the image padded by 4, a random horizontal flip and per-channel
normalisation, all in torch ops with the worker's own generator. How the training set is dealt
to the workers (``partition``):

- ``reshuffle`` (the paper's): every epoch the whole set is shuffled by a generator seeded from
  ``(seed, epoch)`` and cut into ``n`` equal contiguous parts, one per worker;
- ``dirichlet``: non-iid by label: each class is split over the workers in proportions drawn from
  Dirichlet(``alpha``), fixed for the run, determined by the seed and saved as
  ``RUN_DIR/partition.json``;
- ``sorted``: the set sorted by label and cut into ``n`` contiguous shards.
"""

from __future__ import annotations

import json
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from gossip.registry import option
from gossip.comm.seeding import generator, seed_for
from gossip.tasks.base import DataError, DataStream, Task, TaskPlan
from gossip.tasks.models import ResNet20

MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
TRAIN_FILES = [f"data_batch_{k}" for k in range(1, 6)]
TRAIN_SIZE = 50_000


@dataclass
class ImageClassificationOptions:
    """ResNet-20 on CIFAR-10."""

    name: Literal["resnet20"] = option("resnet20", help="ResNet-20 on CIFAR-10")
    data_dir: str = option("data/cifar-10-batches-py", help="folder with data_batch_1..5 and test_batch")
    partition: Literal["reshuffle", "dirichlet", "sorted"] = option(
        "reshuffle", help="reshuffle (every epoch, the paper's) | dirichlet (non-iid by label) | sorted")
    alpha: float = option(1.0, help="dirichlet: concentration (small: each worker sees few classes)", gt=0)
    norm: Literal["batch", "group"] = option("batch", help="batch (running statistics stay local) | group")
    augment: bool = option(True, help="random crop (padding 4) and horizontal flip")


def read_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One CIFAR-10 pickle batch as ``uint8 images N×3×32×32`` and ``int64 labels``."""
    if not path.is_file():
        raise DataError(f"CIFAR-10 not found: expected {path}\n"
                        f"fetch it with: python scripts/download_data.py cifar10 --dir {path.parent}")
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data, labels = np.asarray(batch[b"data"], dtype=np.uint8), np.asarray(batch[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path} is not a CIFAR-10 python batch ({type(exc).__name__}: {exc})") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DataError(f"{path}: expected N×3072 images and N labels, got {data.shape} and {labels.shape}")
    return torch.from_numpy(data).view(-1, 3, 32, 32), torch.from_numpy(labels)


def augment(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random 32×32 crops of the images padded by 4 and random horizontal flips (float N×3×32×32)."""
    count, size = len(images), images.shape[-1]
    padded = F.pad(images, (4, 4, 4, 4))
    offsets = torch.randint(0, 9, (2, count), generator=gen)
    span = torch.arange(size)
    rows = (offsets[0][:, None] + span)[:, None, :, None]
    cols = (offsets[1][:, None] + span)[:, None, None, :]
    crops = padded[torch.arange(count)[:, None, None, None], torch.arange(3)[None, :, None, None], rows, cols]
    flip = torch.rand(count, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], crops.flip(-1), crops)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 or [0, 255] float images to per-channel standardised floats."""
    return (images.float() / 255 - MEAN.to(images.device)) / STD.to(images.device)


def dirichlet_partition(labels: torch.Tensor, workers: int, alpha: float, seed: int) -> list[torch.Tensor]:
    """Each class split over the workers in Dirichlet(``alpha``) proportions; every index exactly once."""
    rng = np.random.default_rng(seed_for(seed, "dirichlet"))
    parts: list[list[np.ndarray]] = [[] for _ in range(workers)]
    for label in np.unique(labels.numpy()):
        indices = rng.permutation(np.flatnonzero(labels.numpy() == label))
        cuts = (np.cumsum(rng.dirichlet([alpha] * workers))[:-1] * len(indices)).astype(int)
        for worker, chunk in enumerate(np.split(indices, cuts)):
            parts[worker].append(chunk)
    return [torch.from_numpy(np.sort(np.concatenate(p))) for p in parts]


class ImageStream(DataStream):
    """A worker's batches for one partition scheme: ``indices_for(epoch)`` gives its examples."""

    def __init__(self, task: "ImageClassificationTask", worker: int) -> None:
        self.task, self.worker = task, worker
        self.generator = generator(task.seed, "augment", worker)
        self.epoch, self.position = 0, 0
        self.order = task.indices_for(worker, 0)

    def next(self) -> tuple[torch.Tensor, ...]:
        if self.position >= len(self.order):
            self.epoch, self.position = self.epoch + 1, 0
            self.order = self.task.indices_for(self.worker, self.epoch)
        chosen = self.order[self.position:self.position + self.task.batch_size]
        self.position += len(chosen)
        images = self.task.train_images[chosen]
        if self.task.options.augment:
            images = augment(images, self.generator)
        return normalise(images), self.task.train_labels[chosen]

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.epoch, self.position = state["epoch"], state["position"]
        self.order = self.task.indices_for(self.worker, self.epoch)


class ImageClassificationTask(Task):
    Options = ImageClassificationOptions
    metric = "accuracy"

    def __init__(self, options: ImageClassificationOptions, workers: int, seed: int, batch_size: int) -> None:
        super().__init__(options, workers, seed, batch_size)
        root = Path(options.data_dir)
        parts = [read_batch(root / name) for name in TRAIN_FILES]
        self.train_images = torch.cat([images for images, _ in parts])
        self.train_labels = torch.cat([labels for _, labels in parts])
        self.test_images, self.test_labels = read_batch(root / "test_batch")
        if len(self.train_images) < workers * batch_size:
            raise DataError(f"{len(self.train_images)} training images are fewer than one batch per worker")
        if options.partition == "dirichlet":
            self.fixed = dirichlet_partition(self.train_labels, workers, options.alpha, seed)
            empty = [worker for worker, part in enumerate(self.fixed) if len(part) == 0]
            if empty:
                raise DataError(f"task.alpha: Dirichlet({options.alpha}) leaves worker {empty[0]} without examples; "
                                f"raise task.alpha or change the seed")
        elif options.partition == "sorted":
            order = torch.argsort(self.train_labels, stable=True)
            self.fixed = list(order[:len(order) // workers * workers].chunk(workers))

    def save(self, run_dir: Path) -> None:
        """A fixed partition (dirichlet, sorted) goes to ``RUN_DIR/partition.json``: worker → indices."""
        if self.options.partition != "reshuffle":
            parts = {str(worker): indices.tolist() for worker, indices in enumerate(self.fixed)}
            (run_dir / "partition.json").write_text(json.dumps(parts))

    def indices_for(self, worker: int, epoch: int) -> torch.Tensor:
        """The examples ``worker`` visits in ``epoch``, in order."""
        if self.options.partition == "reshuffle":
            order = torch.randperm(len(self.train_images), generator=generator(self.seed, "reshuffle", epoch))
            share = len(order) // self.workers
            return order[worker * share:(worker + 1) * share]
        own = self.fixed[worker]
        return own[torch.randperm(len(own), generator=generator(self.seed, "order", worker, epoch))]

    @classmethod
    def plan(cls, options: ImageClassificationOptions, workers: int, seed: int, batch_size: int) -> TaskPlan:
        return TaskPlan(ResNet20(norm=options.norm), math.ceil(TRAIN_SIZE // workers / batch_size))

    def steps_per_epoch(self) -> int:
        """Batches per epoch of one worker's share (the last, smaller batch included)."""
        return math.ceil(len(self.train_images) // self.workers / self.batch_size)

    def build_model(self) -> nn.Module:
        return ResNet20(norm=self.options.norm)

    def stream(self, worker: int) -> DataStream:
        return ImageStream(self, worker)

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...], memory: dict[str, Any]) -> torch.Tensor:
        images, labels = batch
        return F.cross_entropy(model(images), labels)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, full: bool = True) -> dict[str, float]:
        device = next(model.parameters()).device
        total_loss, correct = torch.zeros((), device=device), torch.zeros((), device=device)
        for start in range(0, len(self.test_images), 1000):
            images = normalise(self.test_images[start:start + 1000].to(device))
            labels = self.test_labels[start:start + 1000].to(device)
            logits = model(images)
            total_loss += F.cross_entropy(logits, labels, reduction="sum")
            correct += (logits.argmax(1) == labels).sum()
        count = len(self.test_images)
        return {"loss": total_loss.item() / count, "accuracy": correct.item() / count}
