"""Config loading, overrides and validation: every error is one line naming the key."""

from __future__ import annotations

import pytest

from gossip import config as cfg
from gossip.config import ConfigError

from gossip.train import main


def load(raw: dict, overrides=()) -> cfg.Config:
    return cfg.from_dict(cfg.apply_overrides({"train": {"steps": 10}, **raw}, list(overrides)))


def error_of(raw: dict, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        load(raw, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults_and_sections_parse():
    config = load({"workers": 8, "topology": {"name": "torus", "rows": 2, "cols": 4},
                   "optimizer": {"lr": 1, "momentum": 0.9},
                   "lr_schedule": {"name": "warmup_step", "milestones": [1, 2.5]}})
    assert config.workers == 8 and config.topology.options == {"rows": 2, "cols": 4}
    assert config.optimizer.lr == 1.0 and isinstance(config.optimizer.lr, float)
    assert config.optimizer.options == {"momentum": 0.9}
    assert config.lr_schedule.options == {"milestones": [1.0, 2.5]}
    assert config.algorithm.name == "dpsgd" and config.task.name == "logistic"


def test_set_overrides_are_typed_by_the_dataclass():
    config = load({}, ["optimizer.lr=0.5", "workers=6", "algorithm.name=allreduce", "task.dim=3",
                       "optimizer.momentum=0.9", "optimizer.nesterov=true",
                       "lr_schedule.name=warmup_step", "lr_schedule.milestones=[3, 4]"])
    assert (config.optimizer.lr, config.workers, config.algorithm.name, config.task.dim) == (0.5, 6, "allreduce", 3)
    assert config.optimizer.options == {"momentum": 0.9, "nesterov": True}
    assert config.lr_schedule.options["milestones"] == [3.0, 4.0]
    assert load({}, ["optimizer.lr=1e-3"]).optimizer.lr == 1e-3  # YAML 1.1 reads 1e-3 as a string
    assert "expected an integer" in error_of({}, ["workers=many"])


def test_unknown_key_suggests_the_closest():
    message = error_of({"optimiser": {"lr": 1}})
    assert message.startswith("optimiser: unknown key") and "did you mean 'optimizer'" in message
    assert "optimizer.momentun: unknown key" in error_of({"optimizer": {"momentun": 0.9}})
    assert "did you mean 'momentum'" in error_of({"optimizer": {"momentun": 0.9}})


@pytest.mark.parametrize("key, shown", [("\n", "'\\n': unknown key"), ("", "'': unknown key"),
                                        ("a b", "'a b': unknown key"), (3, "3: unknown key")])
def test_an_unprintable_or_odd_key_is_quoted_on_one_line(key, shown):
    message = error_of({key: None})
    assert message.startswith(shown) and "\n" not in message
    assert "\n" not in error_of({"optimizer": {"lr\nx": 1}})


@pytest.mark.parametrize("raw, expected", [
    ({"workers": "8"}, "workers: expected an integer"),
    ({"workers": 0}, "workers: 0 is out of range"),
    ({"optimizer": {"lr": -1}}, "optimizer.lr: -1.0 is out of range; allowed: > 0"),
    ({"optimizer": {"nesterov": 1}}, "optimizer.nesterov: expected true or false"),
    ({"backend": "mpi"}, "backend: 'mpi' is not allowed"),
    ({"algorithm": {"name": "dpsdg"}}, "algorithm.name: unknown algorithm 'dpsdg' (did you mean 'dpsgd'?)"),
    ({"algorithm": {"name": "dpsgd", "gamma": 0.1}}, "algorithm.gamma: unknown key"),
    ({"task": {"name": "logistic", "dim": 0}}, "task.dim: 0 is out of range"),
    ({"topology": {"name": "torus", "rows": 3, "cols": 3}}, "topology:"),
    ({"topology": {"name": "hypercube"}, "workers": 6}, "topology:"),
    ({"topology": {"name": "moebius"}}, "topology.name: unknown topology 'moebius'"),
    ({"topology": 3}, "topology: expected a mapping of keys, got int 3"),
    ({"train": {"steps": 5, "epochs": 1}}, "train: set exactly one of train.steps and train.epochs"),
])
def test_bad_values_name_the_key(raw, expected):
    assert expected in error_of(raw)


def test_reference_lists_every_key_with_help():
    rows = cfg.fields_reference()
    paths = [r[0] for r in rows]
    for key in ["seed", "workers", "topology.name", "algorithm[dpsgd].name", "task[logistic].dim",
                "optimizer.lr", "optimizer.KEYWORD", "lr_schedule.name", "lr_schedule[warmup_step].milestones", "train.steps", "train.eval_every", "run.dir", "backend"]:
        assert key in paths
    assert all(help_text for *_, help_text in rows)


@pytest.mark.parametrize("extra, fragment", [
    (["--set", "optimizer.lrr=1"], "optimizer.lrr: unknown key"),
    (["--set", "optimizer.lr=fast"], "optimizer.lr: expected a number"),
    (["--set", "topology.name=torus", "--set", "topology.rows=3"], "topology:"),
])
def test_cli_config_errors_are_one_line_exit_2_nothing_written(tmp_path, root, extra, fragment, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # run.dir is resolved against the working directory
    run_dir = tmp_path / "run"
    assert main(["--config", str(root / "configs/logistic.yaml"), "--run-dir", str(run_dir), *extra]) == 2
    err = capsys.readouterr().err
    assert fragment in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not run_dir.exists() and not (tmp_path / "runs").exists()


def test_missing_config_file_is_one_line(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
