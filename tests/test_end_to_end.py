"""The command line end to end: the quick start trains, and its numbers do not depend on how the
workers are placed on processes."""

from __future__ import annotations

import collections
import math
import re

import pytest
import yaml

from gossip.train import main

from conftest import read_metrics, run_cli

SMALL = ["--set", "workers=4", "--set", "train.steps=60", "--set", "train.eval_every=10", "--no-progress"]


def offline_corpus() -> dict[str, list[str]]:
    """The offline corpus as docs/concepts and the task's docstring describe it, rebuilt here:
    Python's help topics in key order, non-empty lines cut 80/10/10, lower-cased words and single
    punctuation marks, ``<eos>`` after every line."""
    from pydoc_data.topics import topics

    lines = [line for key in sorted(topics) for line in topics[key].splitlines() if line.strip()]
    cut1, cut2 = int(0.8 * len(lines)), int(0.9 * len(lines))
    words = lambda part: [w for line in part for w in re.findall(r"\w+|[^\w\s]", line.lower()) + ["<eos>"]]
    return {"train": words(lines[:cut1]), "valid": words(lines[cut1:cut2])}


def test_quickstart_language_model_learns_more_than_word_frequencies(tmp_path, root):
    """The README's main job with the small LM (width 32, one layer) for 3 of its 10 epochs: its
    validation perplexity ends below that of the add-one-smoothed unigram model of the training
    text (a model that knows only word frequencies), computed here; the number of steps follows
    from the corpus length (it changes with the Python version's help topics)."""
    config = yaml.safe_load((root / "configs/quickstart.yaml").read_text())
    workers, batch, bptt = config["workers"], config["train"]["batch_size"], config["task"]["bptt"]
    corpus = offline_corpus()
    rows = len(corpus["train"]) // workers // batch  # each worker's contiguous shard as `batch` columns
    steps = 3 * math.ceil((rows - 1) / bptt)  # bptt-long windows down the columns, 3 epochs
    counts = collections.Counter(corpus["train"])
    vocabulary, total = len(counts) + 1, len(corpus["train"])  # + <unk> for unseen words
    unigram = math.exp(-sum(math.log((counts[w] + 1) / (total + vocabulary)) for w in corpus["valid"])
                       / len(corpus["valid"]))

    run_dir = tmp_path / "run"
    assert main(["--config", str(root / "configs/quickstart.yaml"), "--run-dir", str(run_dir),
                 "--set", "task.embed_dim=32", "--set", "task.hidden=32", "--set", "task.layers=1",
                 "--set", "train.epochs=3", "--no-progress"]) == 0
    records = read_metrics(run_dir)
    every = config["train"]["eval_every"]
    assert [r["step"] for r in records] == list(range(every, steps + 1, every)) + ([] if steps % every == 0 else [steps])
    assert records[0]["eval_perplexity"] < vocabulary  # below a uniform guess already
    assert records[-1]["eval_perplexity"] < unigram, (records[-1]["eval_perplexity"], unigram)


def test_synthetic_run_trains_and_writes_the_metrics(tmp_path, root, capsys):
    run_dir = tmp_path / "run"
    assert main(["--config", str(root / "configs/logistic.yaml"), "--run-dir", str(run_dir), *SMALL]) == 0
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == [10, 20, 30, 40, 50, 60]
    for key in ["epoch", "lr", "train_loss", "eval_loss", "eval_accuracy", "local_eval_loss_mean",
                "local_eval_loss_std", "consensus_distance", "bytes_per_worker", "time_compute_s",
                "time_codec_s", "time_comm_s"]:
        assert key in records[-1]
    # D-PSGD on the ring of 4: 2 neighbours × 545 parameters × 4 bytes per step, 10 steps a record
    assert [r["bytes_per_worker"] for r in records] == [step * 2 * 545 * 4 for step in range(10, 61, 10)]
    # the loss of a logistic model starts near log 2 (0.69) and the problem is learnable (noise 0.1):
    # a fifth lower after 60 steps is far from the optimum, and far from chance
    assert records[-1]["train_loss"] < 0.8 * records[0]["train_loss"]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["workers"] == 4
    assert "done: 60 steps" in capsys.readouterr().out


def test_placement_does_not_change_the_numbers(tmp_path, root):
    """4 workers in 1 process and in 2 gloo processes (2 workers each) give the same train_loss at
    every record."""
    config = str(root / "configs/logistic.yaml")
    assert main(["--config", config, "--run-dir", str(tmp_path / "one"), *SMALL]) == 0
    multi = run_cli(["--config", config, "--run-dir", str(tmp_path / "two"), *SMALL], cwd=tmp_path,
                    torchrun=2, timeout=300)
    assert multi.returncode == 0, multi.stderr
    one, two = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [10, 20, 30, 40, 50, 60]
    for a, b in zip(one, two):
        # float32 sums over workers ordered per process first: ~1e-7 relative per addition
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["eval_loss"] == pytest.approx(a["eval_loss"], rel=1e-5)
        assert b["bytes_per_worker"] == a["bytes_per_worker"]


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, root):
    result = run_cli(["--config", str(root / "configs/logistic.yaml"), "--dry-run"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "spectral gap" in result.stdout and "dpsgd" in result.stdout
    assert not (tmp_path / "runs").exists()


def test_with_resume_never_an_existing_run_is_not_overwritten(tmp_path, root, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # run.dir (runs/logistic) is resolved against the working directory
    args = ["--config", str(root / "configs/logistic.yaml"), "--set", "train.steps=2", "--set", "run.resume=never",
            "--no-progress"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 0 and "runs/logistic-2" in capsys.readouterr().err
    assert (tmp_path / "runs/logistic-2/metrics.jsonl").exists()
    assert main(args + ["--run-dir", str(tmp_path / "runs/logistic")]) == 2
    assert "already holds a run" in capsys.readouterr().err
