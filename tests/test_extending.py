"""A task or an algorithm named ``module.path:Name`` in the config: it resolves to the class
and its ``Options``, its keys are checked like the built-ins' keys, the config round-trips through
YAML, the dry run prices its messages, and every way the name can be wrong is one line."""

from __future__ import annotations

import textwrap

import pytest

from gossip import config as cfg
from gossip.algorithms import ALGORITHMS
from gossip.registry import ConfigError
from gossip.tasks import TASKS
from gossip.train import main

from conftest import ROOT

ALGORITHM = "examples.my_algorithm.algorithm:MixingDPSGD"
TASK = "examples.char_transformer.task:CharTransformerTask"
USER = {"algorithm": {"name": ALGORITHM, "gamma": 0.25}, "task": {"name": TASK, "width": 32}, "train": {"steps": 2}}


def error_of(raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        cfg.from_dict(raw)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_path_resolves_to_the_class_and_its_options():
    from examples.my_algorithm.algorithm import MixingDPSGD, MixingDPSGDOptions

    assert ALGORITHMS.implementation(ALGORITHM) is MixingDPSGD
    assert ALGORITHMS.options(ALGORITHM, "algorithm.name") is MixingDPSGDOptions
    assert ALGORITHMS.implementation("dpsgd").Options is ALGORITHMS.options("dpsgd", "algorithm.name")
    assert TASKS.implementation("lstm").Options is TASKS.options("lstm", "task.name")


def test_user_options_are_parsed_and_the_config_round_trips():
    config = cfg.from_dict(USER)
    assert (config.algorithm.name, config.algorithm.gamma, config.algorithm.order) == (ALGORITHM, 0.25, "overlap")
    assert (config.task.name, config.task.width) == (TASK, 32)
    assert cfg.from_dict(cfg.yaml.safe_load(cfg.dump(config))) == config


@pytest.mark.parametrize("section, key, expected", [
    ("algorithm", "gama", "algorithm.gama: unknown key (did you mean 'gamma'?)"),
    ("task", "widht", "task.widht: unknown key (did you mean 'width'?)"),
])
def test_an_unknown_user_option_suggests_the_closest(section, key, expected):
    assert error_of({**USER, section: {"name": USER[section]["name"], key: 1}}).startswith(expected)


def test_user_options_keep_their_bounds_and_checks():
    assert error_of({**USER, "algorithm": {"name": ALGORITHM, "gamma": 2}}).startswith(
        "algorithm.gamma: 2.0 is out of range; allowed: > 0 and <= 1")
    assert error_of({**USER, "task": {"name": TASK, "width": 30, "heads": 4}}) == \
        "task.heads: 4 must divide width (30)"


@pytest.fixture
def modules(tmp_path, monkeypatch):
    """Importable modules written on the spot: ``modules(name, source)``."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(name: str, source: str) -> None:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    return write


BAD_NAMES = [
    ("nowhere.algos:Mine", "algorithm.name: no module named 'nowhere' (from 'nowhere.algos:Mine'); "
                           "expected module.path:Name with the module importable from sys.path"),
    ("user_algos:Mixr", "algorithm.name: module 'user_algos' has no attribute 'Mixr' (did you mean "
                          "'Mixer'?); expected module.path:Name"),
    ("user_algos:helper", "algorithm.name: user_algos:helper is not a subclass of gossip.algorithms.base.Algorithm"),
    ("user_algos:Bare", "algorithm.name: user_algos:Bare has no Options dataclass; declare its options as the "
                        "class attribute Options = a @dataclass"),
    ("user_broken:Mine", "algorithm.name: importing 'user_broken' raised ZeroDivisionError: division by zero"),
    ("user_needs:Mine", "algorithm.name: importing 'user_needs' raised ModuleNotFoundError: No module named "
                        "'not_installed_anywhere'"),
    ("user_algos:", "algorithm.name: 'user_algos:' is not of the form module.path:Name"),
    ("user algos:Mixer", "algorithm.name: 'user algos:Mixer' is not of the form module.path:Name"),
    ("dpsdg", "algorithm.name: unknown algorithm 'dpsdg' (did you mean 'dpsgd'?); allowed: allreduce, choco, "
              "d2, deepsqueeze, dpsgd, gradient_tracking, local, moniqua, powergossip, qgm, sgp, "
              "or module.path:Name"),
]


@pytest.mark.parametrize("name, expected", BAD_NAMES, ids=[n for n, _ in BAD_NAMES])
def test_a_wrong_name_is_one_line_that_says_what_is_wrong(modules, name, expected):
    modules("user_algos", """
        from dataclasses import dataclass
        from typing import Literal
        from examples.my_algorithm.algorithm import MixingDPSGD

        def helper():
            pass

        class Mixer(MixingDPSGD):
            pass

        class Bare(MixingDPSGD):
            Options = dict

        class Fixed(MixingDPSGD):
            @dataclass
            class Options:
                name: Literal["fixed"] = "fixed"
        """)
    modules("user_broken", "1 / 0\n")
    modules("user_needs", "import not_installed_anywhere\n")
    assert error_of({"algorithm": {"name": name}, "train": {"steps": 2}}) == expected


def test_a_key_without_default_is_required(modules):
    modules("user_required", """
        from dataclasses import dataclass
        from examples.my_algorithm.algorithm import MixingDPSGD

        class Strict(MixingDPSGD):
            @dataclass
            class Options:
                rate: float
                name: str = "user_required:Strict"
        """)
    assert error_of({"algorithm": {"name": "user_required:Strict"}, "train": {"steps": 2}}) == \
        "algorithm.rate: missing; algorithm requires it (it has no default)"


def test_dry_run_prices_the_user_algorithm(capsys):
    config = ROOT / "examples/my_algorithm/config.yaml"
    assert main(["--config", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"'name': '{ALGORITHM}'" in out
    assert "545 parameters" in out and "worker 0 sends 4,360 B" in out  # 4,360 = degree 2 x 4 bytes x 545
