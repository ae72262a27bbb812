"""The first 20 steps of a few runs, recorded with the hand-written SGD that gossip had before it
used ``torch.optim``, replayed on the current code: the losses, learning rates and consensus
distances agree to 1e-6 (relative; the consensus distance, a float32 sum over the whole model,
to 1e-5).

``tests/data/recorded_curves.json`` holds each case's command-line arguments and its records. It
was written by ``python tests/test_recorded_curves.py`` run against that older code; running it
again with ``PYTHONPATH`` pointing to that code rewrites the file. The recorded arguments use
that code's keys: its ``schedule.KEY`` is ``lr_schedule.KEY`` with ``lr_schedule.name=warmup_step``
now (:func:`current_arguments`).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data" / "recorded_curves.json"
ROOT = Path(__file__).resolve().parents[1]

STEPS = ["--set", "train.steps=20", "--set", "train.eval_every=1", "--set", "train.checkpoint_every=0"]
SMALL_LSTM = ["--set", "workers=4", "--set", "task.embed_dim=32", "--set", "task.hidden=32", "--set", "task.layers=1"]
LOGISTIC = ["--set", "task.samples_per_worker=256", "--set", "train.batch_size=32",
            "--set", "optimizer.momentum=0.9", "--set", "optimizer.weight_decay=1e-3",
            "--set", "optimizer.clip_norm=0.05"]

#: Each case: the config file and its ``--set`` arguments.
CASES: dict[str, tuple[str, list[str]]] = {
    "quickstart": ("configs/quickstart.yaml", SMALL_LSTM + STEPS),
    "logistic_nesterov_schedule": ("configs/logistic.yaml", LOGISTIC + STEPS + [
        "--set", "optimizer.nesterov=true", "--set", "schedule.warmup_epochs=1",
        "--set", "schedule.warmup_factor=3.0", "--set", "schedule.milestones=[1.5]", "--set", "schedule.decay=0.1"]),
    "allreduce_clip_worker": ("configs/logistic.yaml", LOGISTIC + STEPS + [
        "--set", "algorithm.name=allreduce", "--set", "optimizer.clip_scope=worker"]),
    "allreduce_clip_mean": ("configs/logistic.yaml", LOGISTIC + STEPS + [
        "--set", "algorithm.name=allreduce", "--set", "optimizer.clip_scope=mean"]),
}

KEYS = ("step", "train_loss", "eval_loss", "lr", "consensus_distance", "local_eval_loss_mean")
#: Relative tolerance per key (default 1e-6). The consensus distance sums float32 squares of the
#: workers' small differences over the whole model (116,292 parameters here); its rounding follows
#: the order of that sum, which the CPU's vector width sets: two x86 machines gave 3.4e-6 apart.
TOLERANCE = {"consensus_distance": 1e-5}


def current_arguments(arguments: list[str]) -> list[str]:
    """The recorded ``--set KEY=VALUE`` pairs with the older ``schedule.KEY`` written as today's keys."""
    result: list[str] = []
    for flag, item in zip(arguments[::2], arguments[1::2]):
        if item.startswith("schedule."):
            if "lr_schedule.name=warmup_step" not in result:
                result += ["--set", "lr_schedule.name=warmup_step"]
            item = "lr_" + item
        result += [flag, item]
    return result


def run_case(config: str, overrides: list[str], run_dir: Path) -> list[dict[str, float]]:
    """Train one case in this process and return the recorded keys of each of its records."""
    from gossip.train import main

    assert main(["--config", str(ROOT / config), "--run-dir", str(run_dir), "--no-progress", *overrides]) == 0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: r[k] for k in KEYS if k in r} for r in records]


@pytest.mark.parametrize("case", sorted(CASES))
def test_replays_the_recorded_curve(case, tmp_path):
    recorded = json.loads(DATA.read_text())[case]
    assert recorded["arguments"] == CASES[case][1]
    replayed = run_case(recorded["config"], current_arguments(recorded["arguments"]), tmp_path / "run")
    assert [r["step"] for r in replayed] == [r["step"] for r in recorded["records"]]
    for old, new in zip(recorded["records"], replayed):
        assert old.keys() == new.keys()
        for key in old:
            assert math.isclose(new[key], old[key], rel_tol=TOLERANCE.get(key, 1e-6), abs_tol=1e-12), \
                (case, old["step"], key, old[key], new[key])


def record(path: Path = DATA) -> None:
    """Run every case, with its recorded arguments, on the code on ``PYTHONPATH`` and write ``path``."""
    import tempfile

    result = {}
    for case, (config, overrides) in CASES.items():
        with tempfile.TemporaryDirectory() as tmp:
            result[case] = {"config": config, "arguments": overrides,
                            "records": run_case(config, overrides, Path(tmp) / "run")}
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    record(Path(sys.argv[1]) if len(sys.argv) > 1 else DATA)
