"""The paper's tasks: model sizes, the WikiText-2 and CIFAR-10 loaders on generated files,
partitions, augmentation, data errors, and the offline language model end to end."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest
import torch
import yaml

from gossip.train import checkpoint
from gossip.tasks import DataError
from gossip.tasks.language import LanguageModelOptions, LanguageModelTask, SequenceStream
from gossip.tasks.models import LSTMLanguageModel, ResNet20
from gossip.tasks.random_batches import RandomBatchesOptions, RandomBatchesTask
from gossip.tasks.vision import (ImageClassificationOptions, ImageClassificationTask, augment,
                                 dirichlet_partition, read_batch)
from gossip.train import main

from conftest import ROOT, read_metrics, run_cli


def test_resnet20_has_the_papers_parameter_count_and_output_shape():
    model = ResNet20()
    assert sum(p.numel() for p in model.parameters()) == 272_474
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert ResNet20(norm="group")(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_lstm_is_tied_and_has_the_expected_size():
    vocabulary, width, layers = 1000, 32, 3
    model = LSTMLanguageModel(vocabulary, width, width, layers)
    assert model.decoder.weight is model.encoder.weight
    per_layer = 4 * width * (width + width) + 2 * 4 * width
    assert sum(p.numel() for p in model.parameters()) == vocabulary * width + layers * per_layer + vocabulary
    logits, (h, c) = model(torch.zeros(7, 5, dtype=torch.long))
    assert logits.shape == (7, 5, vocabulary) and h.shape == c.shape == (layers, 5, width)
    paper = LSTMLanguageModel(33_278)
    assert sum(p.numel() for p in paper.parameters()) == 33_278 * 650 + 3 * (4 * 650 * 1300 + 8 * 650) + 33_278


def write_wikitext(directory, train_lines: int = 200) -> None:
    rng = np.random.default_rng(0)
    words = [f"w{k}" for k in range(30)]
    for split, count in (("train", train_lines), ("valid", 40), ("test", 40)):
        lines = [" " + " ".join(rng.choice(words, size=rng.integers(3, 12))) + " " for _ in range(count)]
        (directory / f"wiki.{split}.tokens").write_text("\n".join(lines[:5] + [" "] + lines[5:]) + "\n")


def test_wikitext_vocabulary_and_contiguous_shards(tmp_path):
    write_wikitext(tmp_path)
    options = LanguageModelOptions(data_dir=str(tmp_path), embed_dim=8, hidden=8, layers=1)
    task = LanguageModelTask(options, workers=3, seed=0, batch_size=4)
    train = [line.split() + ["<eos>"] for line in (tmp_path / "wiki.train.tokens").read_text().splitlines()
             if line.strip()]
    assert set(task.vocabulary.words) == {w for line in train for w in line} | {"<unk>"}
    stream = torch.tensor([task.vocabulary.index[w] for line in train for w in line])
    share = len(stream) // 3
    for worker, columns in enumerate(task.shards):
        own = stream[worker * share:(worker + 1) * share]
        rows = share // 4
        assert torch.equal(columns.t().reshape(-1), own[:rows * 4])
    batches = SequenceStream(task.shards[0], bptt=5)
    inputs, targets, restart = batches.next()
    assert bool(restart) and torch.equal(inputs[1:], targets[:-1]) and inputs.shape == (5, 4)
    assert not bool(batches.next()[2])


def test_the_hidden_state_is_carried_and_reset_at_an_epochs_first_window(tmp_path):
    write_wikitext(tmp_path)
    options = LanguageModelOptions(data_dir=str(tmp_path), embed_dim=8, hidden=8, layers=1)
    task = LanguageModelTask(options, workers=1, seed=0, batch_size=4)
    torch.manual_seed(0)
    model = task.build_model().eval()
    inputs, targets, _ = SequenceStream(task.shards[0], bptt=5).next()
    fresh = task.loss(model, (inputs, targets, torch.tensor(True)), {})
    carried = {"state": tuple(torch.randn(1, 4, 8) for _ in range(2))}
    reset = task.loss(model, (inputs, targets, torch.tensor(True)), dict(carried))
    kept = task.loss(model, (inputs, targets, torch.tensor(False)), carried)
    assert torch.equal(reset, fresh) and not torch.equal(kept, fresh)
    assert not carried["state"][0].requires_grad  # stored detached


def test_wikitext_missing_or_empty_files_are_clear_errors(tmp_path):
    options = LanguageModelOptions(data_dir=str(tmp_path / "absent"))
    with pytest.raises(DataError, match="WikiText-2 not found") as info:
        LanguageModelTask(options, 2, 0, 4)
    assert len(str(info.value).splitlines()) <= 3 and "download_data.py wikitext2" in str(info.value)
    write_wikitext(tmp_path)
    (tmp_path / "wiki.valid.tokens").write_text("")
    with pytest.raises(DataError, match="wiki.valid.tokens is empty"):
        LanguageModelTask(LanguageModelOptions(data_dir=str(tmp_path)), 2, 0, 4)


def write_cifar(directory, per_batch: int = 40) -> torch.Tensor:
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"labels": [int(x) for x in rng.integers(0, 10, per_batch)]}
        with open(directory / name, "wb") as f:
            pickle.dump(batch, f)
    return directory


def test_cifar_loader_partitions_and_augmentation(tmp_path):
    root = write_cifar(tmp_path / "cifar-10-batches-py")
    images, labels = read_batch(root / "data_batch_1")
    assert images.shape == (40, 3, 32, 32) and images.dtype == torch.uint8 and labels.shape == (40,)
    for partition in ("reshuffle", "dirichlet", "sorted"):
        options = ImageClassificationOptions(data_dir=str(root), partition=partition, alpha=0.5)
        task = ImageClassificationTask(options, workers=4, seed=0, batch_size=8)
        seen = torch.cat([task.indices_for(w, 0) for w in range(4)])
        assert len(set(seen.tolist())) == len(seen)  # nobody shares an example
        batch_images, batch_labels = task.stream(1).next()
        assert batch_images.shape == (8, 3, 32, 32) and batch_images.dtype == torch.float32
    sorted_task = ImageClassificationTask(ImageClassificationOptions(data_dir=str(root), partition="sorted"), 4, 0, 8)
    assert all(torch.all(sorted_task.train_labels[p][:-1] <= sorted_task.train_labels[p][1:]) for p in sorted_task.fixed)
    first = ImageClassificationTask(ImageClassificationOptions(data_dir=str(root)), 4, 0, 8)
    assert not torch.equal(first.indices_for(0, 0), first.indices_for(0, 1))  # reshuffled every epoch


def test_a_dirichlet_partition_that_leaves_a_worker_empty_is_refused(tmp_path):
    root = write_cifar(tmp_path / "cifar-10-batches-py")
    options = ImageClassificationOptions(data_dir=str(root), partition="dirichlet", alpha=0.01)
    with pytest.raises(DataError, match="without examples; raise task.alpha"):
        ImageClassificationTask(options, workers=16, seed=0, batch_size=8)


def test_a_fixed_partition_is_saved_in_the_run_directory(tmp_path):
    root = write_cifar(tmp_path / "cifar-10-batches-py")
    task = ImageClassificationTask(ImageClassificationOptions(data_dir=str(root), partition="dirichlet"), 4, 0, 8)
    task.save(tmp_path)
    saved = json.loads((tmp_path / "partition.json").read_text())
    assert [saved[str(w)] for w in range(4)] == [p.tolist() for p in task.fixed]


def test_dirichlet_partition_covers_every_sample_once_and_follows_the_seed():
    labels = torch.randint(0, 10, (1000,), generator=torch.Generator().manual_seed(1))
    parts = dirichlet_partition(labels, 8, alpha=0.3, seed=5)
    assert sorted(torch.cat(parts).tolist()) == list(range(1000))
    again = dirichlet_partition(labels, 8, alpha=0.3, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(parts, again))
    other = dirichlet_partition(labels, 8, alpha=0.3, seed=6)
    assert not all(torch.equal(a, b) for a, b in zip(parts, other))
    skew = [torch.bincount(labels[p], minlength=10).max().item() / max(1, len(p)) for p in parts if len(p)]
    assert max(skew) > 0.3  # small alpha: some worker is dominated by one class


def test_augmentation_crops_a_window_of_the_padded_image_and_flips():
    """Every output is one 32 × 32 window of the image padded by 4 (9 × 9 offsets), maybe flipped,
    and over 64 images the offsets and flips vary: an identity augmentation (offset 4, 4, never
    flipped) fails. With uniform draws, fewer than 5 distinct row (or column) offsets among 64 has
    probability below C(9, 4) (4/9)^64 < 1e-20, and no flip (or only flips) 2^-63."""
    count = 64
    images = torch.arange(count * 3 * 32 * 32, dtype=torch.float32).view(count, 3, 32, 32) + 1  # all distinct
    out = augment(images, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    found = []
    for k in range(count):
        matches = [(r, c, flip) for r in range(9) for c in range(9) for flip in (False, True)
                   if torch.equal(out[k], padded[k, :, r:r + 32, c:c + 32].flip(-1) if flip
                                  else padded[k, :, r:r + 32, c:c + 32])]
        assert len(matches) == 1, (k, matches)  # distinct values: exactly one window fits
        found.append(matches[0])
    rows, cols, flips = zip(*found)
    assert len(set(rows)) >= 5 and len(set(cols)) >= 5
    assert 0 < sum(flips) < count


@pytest.mark.parametrize("damage, message", [
    (lambda path: path.write_bytes(path.read_bytes()[:50]), "is not a CIFAR-10 python batch"),
    (lambda path: path.write_bytes(pickle.dumps({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4})),
     "expected N×3072 images"),
])
def test_malformed_cifar_batches_are_one_line(tmp_path, damage, message):
    root = write_cifar(tmp_path / "cifar-10-batches-py")
    damage(root / "data_batch_3")
    with pytest.raises(DataError, match=message) as info:
        ImageClassificationTask(ImageClassificationOptions(data_dir=str(root)), 2, 0, 4)
    assert "\n" not in str(info.value)


def test_missing_data_stops_the_cli_before_writing(tmp_path, capsys):
    code = main(["--config", str(ROOT / "configs/ring8_resnet20.yaml"), "--set", "task.data_dir=nowhere",
                 "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: CIFAR-10 not found") and len(err.splitlines()) <= 3
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("config", ["ring16_lstm", "ring8_resnet20", "quickstart"])
def test_paper_configs_dry_run_without_data(config, capsys):
    assert main(["--config", str(ROOT / f"configs/{config}.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "parameters" in out and "MiB per epoch" in out
    if config == "ring8_resnet20":
        # the paper's Table 2 row, derived: ResNet-20's 272,474 parameters (He et al.'s count), the
        # 50,000 CIFAR-10 training images dealt to the workers in batches, fp32 to each neighbour
        raw = yaml.safe_load((ROOT / "configs/ring8_resnet20.yaml").read_text())
        steps = math.ceil(50_000 // raw["workers"] / raw["train"]["batch_size"])
        per_step = 272_474 * 4 * 2  # the ring: two neighbours
        assert "272,474 parameters" in out
        assert f"{per_step * steps / 2**20:.1f} MiB per epoch ({steps} steps)" in out
        assert (steps, f"{per_step * steps / 2**20:.1f}") == (49, "101.9")  # ALGORITHMS.md's "102 MB"


TINY_LM = ["--set", "workers=4", "--set", "task.embed_dim=16", "--set", "task.hidden=16", "--set", "task.layers=1",
           "--set", "train.epochs=null", "--set", "train.steps=12", "--set", "train.eval_every=4",
           "--set", "train.batch_size=8", "--no-progress"]


def test_offline_language_model_gives_the_same_losses_in_one_and_two_processes(tmp_path):
    config = str(ROOT / "configs/quickstart.yaml")
    assert main(["--config", config, "--run-dir", str(tmp_path / "one"), *TINY_LM]) == 0
    two = run_cli(["--config", config, "--run-dir", str(tmp_path / "two"), *TINY_LM], cwd=tmp_path,
                  torchrun=2, timeout=240)
    assert two.returncode == 0, two.stderr
    one, two = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [4, 8, 12]
    for a, b in zip(one, two):
        # the same float32 operations per worker; only the measurement's sums over workers are
        # ordered differently (per process first): a few float32 roundings, ~1e-7 relative each
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["eval_perplexity"] == pytest.approx(a["eval_perplexity"], rel=1e-5)  # exp of the same


def test_offline_language_model_resumes_exactly(tmp_path):
    """The carried hidden state and each worker's dropout generator are part of the checkpoint."""
    config = str(ROOT / "configs/quickstart.yaml")
    assert main(["--config", config, "--run-dir", str(tmp_path / "whole"), *TINY_LM]) == 0
    assert main(["--config", config, "--run-dir", str(tmp_path / "half"), *TINY_LM, "--set", "train.steps=6"]) == 0
    assert main(["--resume", str(tmp_path / "half"), "--set", "train.steps=12", "--no-progress"]) == 0
    whole, half = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "half")
    assert [r["step"] for r in whole] == [r["step"] for r in half]
    for a, b in zip(whole, half):
        assert (a["train_loss"], a["eval_loss"]) == (b["train_loss"], b["eval_loss"])


def resnet_args(data_dir, run_dir, steps: int) -> list[str]:
    """ResNet-20 with the paper's config on 2 workers and 40 fake images: batches of 4 give
    40 // 2 / 4 = 5 steps per epoch, so 10 steps cross an epoch boundary (a reshuffle)."""
    return ["--config", str(ROOT / "configs/ring8_resnet20.yaml"), "--run-dir", str(run_dir),
            "--set", "workers=2", "--set", f"task.data_dir={data_dir}", "--set", "train.epochs=null",
            "--set", f"train.steps={steps}", "--set", "train.batch_size=4", "--set", "train.eval_every=2",
            "--set", "train.checkpoint_every=2", "--no-progress"]


def test_resnet20_trains_and_resumes_exactly_on_fake_cifar(tmp_path):
    """BatchNorm buffers (local per worker), augmentation generators and the per-epoch reshuffle are
    all part of a step: 10 steps whole equal 6 steps then a resume to 10, bit for bit."""
    data = write_cifar(tmp_path / "cifar-10-batches-py", per_batch=8)
    assert main(resnet_args(data, tmp_path / "whole", 10)) == 0
    assert main(resnet_args(data, tmp_path / "half", 6)) == 0  # stops inside the second epoch
    assert main(["--resume", str(tmp_path / "half"), "--set", "train.steps=10", "--no-progress"]) == 0
    whole, half = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "half")
    assert [r["step"] for r in whole] == [r["step"] for r in half] == [2, 4, 6, 8, 10]
    for a, b in zip(whole, half):
        assert {k: v for k, v in a.items() if not k.startswith("time_")} == \
               {k: v for k, v in b.items() if not k.startswith("time_")}
    states = {}
    for name in ("whole", "half"):
        directory = checkpoint.find_latest(tmp_path / name)
        assert checkpoint.manifest_step(directory) == 10
        states[name] = [checkpoint.load_worker(directory, w, torch.device("cpu")) for w in range(2)]
    for a, b in zip(states["whole"], states["half"]):
        flat_a, flat_b = flatten_state(a), flatten_state(b)
        assert flat_a.keys() == flat_b.keys()
        assert all(torch.equal(flat_a[k], flat_b[k]) for k in flat_a), [k for k in flat_a if not torch.equal(flat_a[k], flat_b[k])]
    means = [v for k, v in flatten_state(states["whole"][0]).items() if k.endswith("running_mean")]
    assert means and any(m.abs().sum() > 0 for m in means)  # the BatchNorm statistics did move
    other = {k: v for k, v in flatten_state(states["whole"][1]).items() if k.endswith("running_mean")}
    assert any(not torch.equal(m, other[k]) for k, m in flatten_state(states["whole"][0]).items()
               if k.endswith("running_mean"))  # and stay local: the two workers' differ


def flatten_state(state, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a nested checkpoint dictionary by its dotted path."""
    out = {}
    if isinstance(state, dict):
        for key, value in state.items():
            out.update(flatten_state(value, f"{prefix}{key}."))
    elif isinstance(state, (list, tuple)):
        for index, value in enumerate(state):
            out.update(flatten_state(value, f"{prefix}{index}."))
    elif isinstance(state, torch.Tensor):
        out[prefix.rstrip(".")] = state
    return out


@pytest.mark.parametrize("model, shapes", [
    ("lstm", [(30, 4), (30, 4), ()]), ("resnet20", [(4, 3, 32, 32), (4,)]), ("mlp", [(4, 6), (4,)])])
def test_random_batches_have_the_models_shapes_and_cycle(model, shapes):
    options = RandomBatchesOptions(model=model, vocabulary=50, hidden=8, layers=1, widths=[6, 5, 3], batches=2)
    task = RandomBatchesTask(options, workers=2, seed=0, batch_size=4)
    stream = task.stream(1)
    first, second, third = stream.next(), stream.next(), stream.next()
    assert [tuple(t.shape) for t in first] == shapes
    assert all(torch.equal(a, b) for a, b in zip(first, third)) and not torch.equal(first[0], second[0])
    assert not torch.equal(first[0], task.stream(0).next()[0])  # each worker its own batches
    loss = task.loss(task.build_model(), first, {})
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert set(task.evaluate(task.build_model())) == {"loss"}
