"""Property-based fuzzing of the command line: random YAML documents and random ``--set``
overrides either dry-run cleanly or stop with one clear line (exit 2) — never a traceback."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gossip.config import fields_reference
from gossip.train import main

KEYS = sorted({re.sub(r"\[[^\]]*\]", "", path) for path, *_ in fields_reference()})
SECTIONS = sorted({key.split(".")[0] for key in KEYS})
LEAVES = sorted({key.split(".")[-1] for key in KEYS})

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 40), st.floats(-10, 10, allow_nan=False),
    st.sampled_from([float("nan"), float("inf"), 1e-3, 0.0]),
    st.sampled_from(["ring", "torus", "dpsgd", "allreduce", "logistic", "least_squares", "auto", "gloo",
                     "uniform", "", "1e-3", "[", "x"]),
    st.text(max_size=6))
values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.sampled_from(LEAVES), scalars, max_size=3))
documents = st.dictionaries(
    st.one_of(st.sampled_from(SECTIONS), st.text(max_size=6)),
    st.one_of(values, st.dictionaries(st.one_of(st.sampled_from(LEAVES), st.text(max_size=4)), values, max_size=4)),
    max_size=6)
overrides = st.lists(
    st.builds(lambda key, value: f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}",
              st.one_of(st.sampled_from(KEYS), st.text(min_size=1, max_size=8)), scalars),
    max_size=4)


def dry_run(text: str, sets: list[str], capsys) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(text)
        args = ["--config", str(path), "--dry-run", "--set", "train.steps=1"]
        args += [f"--set={item}" for item in sets]  # the = form: a value may start with '-'

        code = main(args)
        err = capsys.readouterr().err.strip()
        assert code in (0, 2), err
        if code == 2:
            assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
        assert not (Path(tmp) / "runs").exists()


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=documents, sets=overrides)
def test_random_documents_and_overrides_dry_run_or_fail_in_one_line(document, sets, capsys):
    dry_run(yaml.safe_dump(document), sets, capsys)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=40))
def test_random_text_as_yaml_fails_in_one_line(text, capsys):
    dry_run(text, [], capsys)
