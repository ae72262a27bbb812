"""One door for every kind of component: a topology, a codec, a task and an algorithm of one's own
named in YAML the same way as the built-ins, subclasses of built-ins with their parent's options, a
mixing matrix read from a file, lazy mixing, and one-line errors with exit status 2 for every kind."""

from __future__ import annotations

import numpy as np
import pytest

import topologies
from gossip import config as cfg
from gossip.algorithms import ALGORITHMS, PowerGossip
from gossip.tasks import TASKS
from gossip.tasks.language import LanguageModelTask
from gossip.train import main

from conftest import ROOT, dry_run, read_metrics

SUBCLASSES = "examples.subclasses.components"
FEW = ["--set", "train.steps=4", "--set", "train.eval_every=4", "--set", "train.local_eval=false", "--no-progress"]
LOGISTIC = ["--config", str(ROOT / "configs/logistic.yaml"), "--set", "workers=8", "--set", "task.samples_per_worker=64"]


def test_subclasses_of_built_ins_resolve_with_their_parents_options():
    task_path, algorithm_path = f"{SUBCLASSES}:SmoothedLanguageModel", f"{SUBCLASSES}:PowerGossipEveryOtherStep"
    assert issubclass(TASKS.implementation(task_path), LanguageModelTask)
    assert issubclass(ALGORITHMS.implementation(algorithm_path), PowerGossip)
    config = cfg.from_dict({"task": {"name": task_path, "corpus": "offline", "embed_dim": 16, "hidden": 16},
                            "algorithm": {"name": algorithm_path, "iterations": 3}, "train": {"steps": 1}})
    assert isinstance(config.task, LanguageModelTask.Options) and config.task.name == task_path
    assert isinstance(config.algorithm, PowerGossip.Options) and config.algorithm.iterations == 3
    assert cfg.from_dict(cfg.yaml.safe_load(cfg.dump(config))) == config
    with pytest.raises(cfg.ConfigError, match=r"^algorithm.iteration: unknown key \(did you mean 'iterations'\?\)"):
        cfg.from_dict({"algorithm": {"name": algorithm_path, "iteration": 3}})


def test_the_built_in_task_named_by_its_path_runs(tmp_path):
    assert main([*LOGISTIC, "--set", "task.name=gossip.tasks.synthetic:SyntheticTask", "--run-dir", str(tmp_path),
                 *FEW]) == 0
    assert read_metrics(tmp_path)[-1]["step"] == 4


def test_a_topology_function_of_ones_own_runs_with_its_keys(tmp_path, capsys):
    assert main([*LOGISTIC, "--set", "topology={name: 'examples.my_topology.graphs:ring_of_cliques', clique: 4}",
                 "--dry-run"]) == 0
    assert "degree 3/4" in capsys.readouterr().out  # inside a clique of 4, plus one edge to the next clique
    assert main([*LOGISTIC, "--set", "topology={name: 'examples.my_topology.graphs:ring_of_cliques', clique: 3}",
                 "--dry-run"]) == 2
    assert "clique=3 must divide n=8" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".npy", ".txt"])
def test_a_mixing_matrix_read_from_a_file_runs(tmp_path, suffix):
    W = topologies.torus(2, 4).W
    path = tmp_path / f"W{suffix}"
    np.save(path, W) if suffix == ".npy" else np.savetxt(path, W)
    config = cfg.from_dict({"workers": 8, "topology": {"name": "matrix", "path": str(path)}, "train": {"steps": 1}})
    np.testing.assert_array_equal(config.topology.build(8, 0)(0).W, W)
    assert main([*LOGISTIC, "--set", f"topology={{name: matrix, path: '{path}'}}", "--run-dir", str(tmp_path / "run"),
                 *FEW]) == 0


@pytest.mark.parametrize("matrix, message", [
    (np.full((4, 4), 0.25), "shape (4, 4); expected (8, 8) for n=8 workers"),
    (topologies.ring(8).W * 0.9, "rows of W must sum to 1: row 0 sums to 0.9"),
    (np.eye(8), "graph is not connected (8 components)"),
])
def test_a_bad_matrix_file_is_one_line_with_exit_status_2(tmp_path, capsys, matrix, message):
    path = tmp_path / "W.npy"
    np.save(path, matrix)
    assert main([*LOGISTIC, "--set", f"topology={{name: matrix, path: '{path}'}}", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: topology: matrix") and err.count("\n") == 1 and message in err, err


def test_lazy_mixing_lets_d2_run_on_an_even_ring(tmp_path, capsys):
    assert main([*LOGISTIC, "--set", "algorithm.name=d2", "--dry-run"]) == 2
    assert "set topology.lazy: true" in capsys.readouterr().err
    lazy = cfg.from_dict({"workers": 8, "topology": {"name": "ring", "lazy": True}, "train": {"steps": 1}})
    W = lazy.topology.build(8, 0)(0).W
    np.testing.assert_allclose(W, (topologies.ring(8).W + np.eye(8)) / 2)
    assert np.linalg.eigvalsh(W)[0] > 0
    assert main([*LOGISTIC, "--set", "algorithm.name=d2", "--set", "topology.lazy=true", "--run-dir", str(tmp_path),
                 *FEW]) == 0


def test_a_codec_of_ones_own_runs_with_choco(tmp_path, capsys):
    sets = ["--set", "algorithm.name=choco", "--set", "algorithm.codec={name: 'examples.my_codec.codecs:HalfPrecision'}",
            "--set", "algorithm.gamma=1.0"]
    _, parameters = dry_run([*LOGISTIC, *sets], capsys)
    assert main([*LOGISTIC, *sets, "--run-dir", str(tmp_path), *FEW]) == 0
    assert read_metrics(tmp_path)[-1]["bytes_per_worker"] == 4 * 2 * 2 * parameters  # 4 steps, 2 neighbours, 2 B


@pytest.mark.parametrize("sets, expected", [
    (["algorithm.name=dpsdg"], "algorithm.name: unknown algorithm 'dpsdg' (did you mean 'dpsgd'?)"),
    (["task.name=logistik"], "task.name: unknown task 'logistik' (did you mean 'logistic'?)"),
    (["topology.name=rign"], "topology.name: unknown topology 'rign' (did you mean 'ring'?)"),
    (["algorithm.name=choco", "algorithm.codec=sgn"], "algorithm.codec.name: unknown codec 'sgn' (did you mean 'sign'?)"),
    (["optimizer.name=adamm"], "optimizer.name: unknown optimizer 'adamm' (did you mean 'Adam'?)"),
    (["lr_schedule.name=cosin"], "lr_schedule.name: unknown lr_schedule 'cosin' (did you mean 'cosine'?)"),
    (["topology.name=torus", "topology.rowz=2"], "topology.rowz: unknown key (did you mean 'rows'?)"),
    (["algorithm.name=choco", "algorithm.codec={name: topk, fractoin: 0.1}"],
     "algorithm.codec.fractoin: unknown key (did you mean 'fraction'?)"),
    (["optimizer.momentun=0.9"], "optimizer.momentun: unknown key (did you mean 'momentum'?)"),
    (["topology.name=erdos_renyi", "topology.p=high"], "topology.p: expected a number, got str 'high'"),
    (["topology.name=nowhere.graphs:mine"], "topology.name: no module named 'nowhere'"),
    (["algorithm.name=choco", "algorithm.codec=nowhere.codecs:Mine"], "algorithm.codec.name: no module named 'nowhere'"),
    (["topology.name=examples.my_topology.graphs:ring_of_cliquez"],
     "topology.name: module 'examples.my_topology.graphs' has no attribute 'ring_of_cliquez' "
     "(did you mean 'ring_of_cliques'?); expected module.path:Name"),
])
def test_every_kind_fails_the_same_way_in_one_line_with_exit_status_2(capsys, sets, expected):
    assert main([*LOGISTIC, *[a for s in sets for a in ("--set", s)], "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {expected}") and err.count("\n") == 1 and "Traceback" not in err, err


def test_a_name_alone_is_the_short_form_of_a_section_also_under_set():
    assert cfg.from_dict({"topology": "torus", "workers": 6, "train": {"steps": 1}}).topology.name == "torus"
    raw = cfg.apply_overrides({"algorithm": {"name": "choco", "codec": "topk"}}, ["algorithm.codec.fraction=0.25"])
    assert raw["algorithm"]["codec"] == {"name": "topk", "fraction": 0.25}
    config = cfg.from_dict({**raw, "train": {"steps": 1}})
    assert repr(config.algorithm.build_codec()) == "TopK(fraction=0.25)"
    assert cfg.to_dict(config)["algorithm"]["codec"] == {"name": "topk", "fraction": 0.25}
