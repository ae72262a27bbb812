"""Property-based fuzzing of the command line.

Valid configs (topology, algorithm, task and training length drawn together so that they fit) dry-run
with exit 0, and their printed plan matches closed-form values computed here from the config: the
parameter count, the bytes worker 0 sends per step and per epoch, and the steps per epoch. The same
config with one mutation (an unknown key, a wrong type, an out-of-range value, an impossible
combination) stops with exit 2 and one line naming the mutated key. Random YAML text never gives a
traceback. The examples are derandomized under CI (the "ci" profile in conftest.py), so that a
failure there can be reproduced.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gossip.train import main

# (name, workers) -> the topology section and worker 0's degree, for every builder that needs no seed.
def _topology(name: str, n: int) -> tuple[dict, int] | None:
    if name == "ring":
        return {"name": "ring"}, min(n - 1, 2)
    if name == "complete":
        return {"name": "complete"}, n - 1
    if name == "star":
        return {"name": "star"}, n - 1  # worker 0 is the hub
    if name == "hypercube" and n & (n - 1) == 0:
        return {"name": "hypercube"}, int(math.log2(n))
    if name == "torus":
        rows = next((r for r in range(3, n) if n % r == 0 and n // r >= 3), None)
        if rows is None:
            return None
        cols = n // rows
        return {"name": "torus", "rows": rows, "cols": cols}, 4
    return None


@st.composite
def valid_configs(draw) -> tuple[dict, dict]:
    """A valid config document and the closed-form plan values it implies."""
    workers = draw(st.integers(2, 12))
    choices = [t for t in ("ring", "complete", "star", "hypercube", "torus") if _topology(t, workers)]
    topology, degree = _topology(draw(st.sampled_from(choices)), workers)
    topology["weights"] = draw(st.sampled_from(["metropolis_hastings", "uniform"]))
    dim, hidden = draw(st.integers(1, 20)), draw(st.sampled_from([0, 1, 7]))
    task = {"name": draw(st.sampled_from(["logistic", "least_squares"])), "dim": dim, "hidden": hidden,
            "samples_per_worker": draw(st.integers(1, 200))}
    # the synthetic model: Linear(dim, 1), or Linear(dim, hidden), ReLU, Linear(hidden, 1)
    shapes = [(hidden, dim), (hidden,), (1, hidden), (1,)] if hidden else [(1, dim), (1,)]
    parameters = sum(math.prod(s) for s in shapes)
    algorithm = {"name": draw(st.sampled_from(["dpsgd", "allreduce", "powergossip", "local"]))}
    if algorithm["name"] == "dpsgd":
        per_step = degree * 4 * parameters
    elif algorithm["name"] == "allreduce":  # a ring all-reduce: 2 (n − 1) / n of the parameters
        per_step = 2 * (workers - 1) * 4 * parameters // workers
    elif algorithm["name"] == "local":
        per_step = 0
    else:
        iterations, rank = draw(st.integers(1, 4)), draw(st.integers(1, 3))
        algorithm.update(iterations=iterations, rank=rank)
        matrices = [s for s in shapes if len(s) == 2]
        # per round the rows or the columns (alternating) times the rank, capped by the smaller side
        rows_and_cols = sum((r + c) * min(rank, r, c) for r, c in matrices)
        dense = sum(math.prod(s) for s in shapes if len(s) == 1)
        per_step = degree * 4 * (iterations * rows_and_cols / 2 + dense)
    batch = draw(st.integers(1, 64))
    length = draw(st.one_of(st.builds(lambda s: {"steps": s}, st.integers(1, 10_000)),
                            st.builds(lambda e: {"epochs": e}, st.sampled_from([0.5, 1, 3, 90]))))
    document = {"seed": draw(st.integers(0, 5)), "workers": workers, "topology": topology, "algorithm": algorithm,
                "task": task, "optimizer": {"lr": draw(st.sampled_from([1e-3, 0.1, 2.0])),
                                            "momentum": draw(st.sampled_from([0.0, 0.9]))},
                "train": {**length, "batch_size": batch}}
    steps_per_epoch = max(1, task["samples_per_worker"] // batch)
    expected = {"parameters": parameters, "per_step": per_step, "steps_per_epoch": steps_per_epoch,
                "length": f"{length['steps']} steps" if "steps" in length else f"{float(length['epochs'])} epochs"}
    return document, expected


# One mutation of a valid document: (path, value, what the one-line error must contain).
MUTATIONS = [
    (("optimizer", "lrr"), 0.1, "optimizer.lrr: unknown key"),
    (("train", "batch_size"), "many", "train.batch_size: expected an integer"),
    (("train", "batch_size"), 0, "train.batch_size: 0 is out of range"),
    (("optimizer", "lr"), -1, "optimizer.lr: -1.0 is out of range"),
    (("workers",), 0, "workers: 0 is out of range"),
    (("workers",), 2.5, "workers: expected an integer"),
    (("optimizer", "nesterov"), "yes please", "optimizer.nesterov: expected true or false"),
    (("topology", "name"), "moebius", "topology.name: unknown topology 'moebius'"),
    (("topology", "weights"), "heavy", "topology.weights:"),
    (("algorithm", "name"), "dpsdg", "algorithm.name: unknown algorithm 'dpsdg'"),
    (("task", "dim"), 0, "task.dim: 0 is out of range"),
    (("seeed",), 1, "seeed: unknown key"),
]


@contextlib.contextmanager
def in_temporary_directory():
    """Run inside a fresh directory: the run directory is resolved against the working directory,
    so that is where a dry run must not have written anything."""
    previous = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            yield Path(tmp)
        finally:
            os.chdir(previous)


def dry_run(document: dict | str, capsys, sets: list[str] = ()) -> tuple[int, str, str]:
    with in_temporary_directory() as tmp:
        path = tmp / "config.yaml"
        path.write_text(document if isinstance(document, str) else yaml.safe_dump(document))
        code = main(["--config", str(path), "--dry-run", *[f"--set={item}" for item in sets]])
        captured = capsys.readouterr()
        assert sorted(p.name for p in tmp.iterdir()) == ["config.yaml"], "a dry run wrote files"
    return code, captured.out, captured.err.strip()


def plan_line(out: str, label: str) -> str:
    (line,) = [line for line in out.splitlines() if line.startswith(label)]
    return line


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(drawn=valid_configs(), mutation=st.sampled_from(MUTATIONS))
def test_valid_configs_plan_as_their_keys_say_and_one_mutation_fails_naming_it(drawn, mutation, capsys):
    document, expected = drawn
    code, out, err = dry_run(document, capsys)
    assert code == 0, err
    assert f"workers      {document['workers']} on 1 process(es)" in out
    assert f"{expected['parameters']:,} parameters" in plan_line(out, "model")
    per_step, per_epoch = expected["per_step"], expected["per_step"] * expected["steps_per_epoch"]
    assert plan_line(out, "bytes") == (f"bytes        worker 0 sends {f'{per_step:,.1f}'.removesuffix('.0')} B = {per_step / 2**20:.3f} MiB per step, "
                                       f"{per_epoch / 2**20:.1f} MiB per epoch ({expected['steps_per_epoch']} steps)")
    assert plan_line(out, "train").startswith(f"train        {expected['length']}, batch "
                                              f"{document['train']['batch_size']} per worker")
    assert f"'name': '{document['algorithm']['name']}'" in plan_line(out, "algorithm")

    path, value, message = mutation
    mutated = yaml.safe_load(yaml.safe_dump(document))
    section = mutated
    for key in path[:-1]:
        section = section[key]
    section[path[-1]] = value
    code, out, err = dry_run(mutated, capsys)
    assert code == 2 and out == "", (code, out, err)
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert message in err, (message, err)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(drawn=valid_configs(), key=st.sampled_from(["optimizer.lr", "train.batch_size", "workers", "task.dim"]),
       value=st.one_of(st.integers(-3, 3), st.sampled_from(["x", "[", "", "-1", "1e-3", "null"])))
def test_a_set_override_of_a_valid_config_plans_or_fails_naming_the_key(drawn, key, value, capsys):
    """``--set KEY=VALUE`` goes through the same checks: exit 0 with the overridden value in the
    plan, or exit 2 and one line that names KEY."""
    document, _ = drawn
    code, out, err = dry_run(document, capsys, [f"{key}={value}"])
    assert code in (0, 2), err
    if code == 2:
        # a worker count that the drawn graph cannot have (a torus, a hypercube) is the topology's error
        named = (key, "topology") if key == "workers" else (key,)
        assert any(err.startswith(f"error: {k}") for k in named) or f"--set {key}" in err, err
        assert "\n" not in err and "Traceback" not in err, err
    elif key == "workers":
        assert f"workers      {int(value)} on" in out
    elif key == "train.batch_size":
        assert f"batch {int(value)} per worker" in out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=40))
def test_random_text_as_yaml_fails_in_one_line(text, capsys):
    code, _, err = dry_run(text, capsys)
    assert code in (0, 2), err
    if code == 2:
        assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
