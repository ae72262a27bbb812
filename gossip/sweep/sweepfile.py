"""What a sweep runs: the sweep file's format, its validation, and its expansion into runs.

A sweep file (``configs/sweeps/NAME.yaml``)::

    base: configs/logistic.yaml        # the config every run starts from
    set: {train.steps: 300}            # overrides for every run
    seeds: [0, 1, 2]                   # every configuration runs once per seed
    grid: {optimizer.lr: [0.03, 0.1]}  # swept in every row
    rows:                              # each row: a label and its own overrides
      - label: dpsgd
        set: {algorithm.name: dpsgd}
      - label: choco
        set: {algorithm.name: choco, algorithm.gamma: [0.1, 0.3]}   # a list: swept in this row

Keys are the dotted keys of ``--set`` (nested mappings are flattened). The top-level ``set`` holds
plain values (a list there is a list-valued key's value); in a row's ``set`` a list is swept, so
a list-valued key is written there as a list of lists (``schedule.milestones: [[10, 20]]``). ``base`` is read relative to the current directory, and
relative to the sweep file's folder when no such file exists there. Every run gets the overrides
in this order: the top-level ``set``, the row's, the swept values, ``seed``.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from gossip import config as config_module
from gossip.config import format_value


class SweepError(ValueError):
    """A sweep-file or command-line problem, as one line naming the key and what is allowed."""


TOP_KEYS = ("base", "set", "seeds", "grid", "rows")
ROW_KEYS = ("label", "set")
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]")
_SCIENTIFIC = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


@dataclass(frozen=True)
class Run:
    """One process of the sweep: a row, one value of each swept key, a seed."""

    label: str
    values: tuple[tuple[str, Any], ...]
    seed: int
    overrides: tuple[str, ...]

    @property
    def name(self) -> str:
        """The run directory's name: label, swept values and seed (file-name safe)."""
        parts = [self.label, *(f"{k}={format_value(v)}" for k, v in self.values), f"seed={self.seed}"]
        return "__".join(_UNSAFE.sub("_", part) for part in parts)

    @property
    def configuration(self) -> tuple[str, tuple[tuple[str, Any], ...]]:
        """What the seeds of one configuration share."""
        return (self.label, self.values)


@dataclass
class Row:
    label: str
    fixed: dict[str, Any] = field(default_factory=dict)
    swept: dict[str, list[Any]] = field(default_factory=dict)


@dataclass
class Sweep:
    """A base config, overrides for every run, rows, a grid for every row, and seeds."""

    base: Path
    rows: list[Row]
    grid: dict[str, list[Any]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    common: dict[str, Any] = field(default_factory=dict)

    def swept_keys(self) -> list[str]:
        """Every swept key, rows' first (in the order they appear), then the grid's."""
        keys = [k for row in self.rows for k in row.swept] + list(self.grid)
        return list(dict.fromkeys(keys))

    def runs(self) -> list[Run]:
        """Every combination: rows in order, their swept values, then the grid, seeds innermost."""
        runs = []
        for row in self.rows:
            axes = {**row.swept, **self.grid}
            for combination in itertools.product(*axes.values()):
                values = tuple(zip(axes, combination))
                for seed in self.seeds:
                    settings = {**self.common, **row.fixed, **dict(values), "seed": seed}
                    overrides = tuple(f"{k}={format_value(v)}" for k, v in settings.items())
                    runs.append(Run(row.label, values, seed, overrides))
        seen: set[str] = set()
        for run in runs:
            if run.name in seen:
                raise SweepError(f"two runs would share the run directory {run.name!r}; "
                                 "make the values or labels differ")
            seen.add(run.name)
        return runs


def parse_grid_option(text: str) -> tuple[str, list[Any]]:
    """``KEY=V1,V2,...`` from the command line: the key and its values, each parsed as YAML."""
    key, sep, values = text.partition("=")
    key = key.strip()
    if not sep or not key or not values.strip():
        raise SweepError(f"--grid {text!r}: expected KEY=V1,V2,..., e.g. --grid optimizer.lr=0.05,0.1,0.2")
    return key, [_yaml_value(v) for v in values.split(",")]


def parse_set_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` from the command line."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise SweepError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.steps=200")
    return key.strip(), _yaml_value(value)


def parse_seeds(text: str) -> list[int]:
    """``0,1,2`` from the command line."""
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise SweepError(f"--seeds {text!r}: expected comma-separated integers, e.g. --seeds 0,1,2") from None
    return _check_seeds(seeds, "--seeds")


def load(path: Path) -> Sweep:
    """Read and validate a sweep file."""
    if not path.is_file():
        raise SweepError(f"sweep file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SweepError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(raw, Mapping):
        raise SweepError(f"{path}: the top level must be a mapping with keys {', '.join(TOP_KEYS)}")
    _check_keys(raw, TOP_KEYS, f"{path}: ")
    if not isinstance(raw.get("base"), str):
        raise SweepError(f"{path}: base: expected the path of a config file, got {raw.get('base')!r}")
    base = Path(raw["base"])
    if not base.is_file() and (path.parent / base).is_file():
        base = path.parent / base
    if not base.is_file():
        raise SweepError(f"{path}: base: {raw['base']!r} exists neither in the current directory "
                         f"nor next to the sweep file")
    common = _flatten(raw.get("set") or {}, f"{path}: set")
    grid = {k: _axis(v, f"{path}: grid.{k}") for k, v in _flatten(raw.get("grid") or {}, f"{path}: grid").items()}
    rows_raw = raw.get("rows")
    if rows_raw is None:
        rows_raw = [{"label": base.stem}]
    if not isinstance(rows_raw, list) or not rows_raw:
        raise SweepError(f"{path}: rows: expected a list of rows, each with a label and a set of overrides")
    rows = [_row(r, i, f"{path}: rows[{i}]") for i, r in enumerate(rows_raw)]
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list):
        raise SweepError(f"{path}: seeds: expected a list of integers, e.g. [0, 1, 2]")
    sweep = Sweep(base, rows, grid, _check_seeds(seeds, f"{path}: seeds"), common)
    check(sweep, f"{path}: ")
    return sweep


def check(sweep: Sweep, where: str = "") -> None:
    """Checks that span sections: unique labels, no key both in a row and in the grid, no swept seed."""
    labels = [row.label for row in sweep.rows]
    for label in labels:
        if labels.count(label) > 1:
            raise SweepError(f"{where}rows: the label {label!r} is used twice; every row needs its own")
    if "seed" in sweep.grid or any("seed" in row.swept or "seed" in row.fixed for row in sweep.rows):
        raise SweepError(f"{where}seed: give the seeds in 'seeds' (or --seeds), not as an override")
    for row in sweep.rows:
        for key in set(row.swept) | set(row.fixed):
            if key in sweep.grid:
                raise SweepError(f"{where}rows[{row.label}].{key}: also in the grid; set it in one place")


def _row(raw: Any, index: int, where: str) -> Row:
    if not isinstance(raw, Mapping):
        raise SweepError(f"{where}: expected a mapping with keys {', '.join(ROW_KEYS)}")
    _check_keys(raw, ROW_KEYS, f"{where}.")
    label = raw.get("label")
    if not isinstance(label, str) or not _LABEL.match(label):
        raise SweepError(f"{where}.label: expected a name of letters, digits and . _ + - "
                         f"(it names run directories), got {label!r}")
    row = Row(label)
    for key, value in _flatten(raw.get("set") or {}, f"{where}.set").items():
        if isinstance(value, list):
            row.swept[key] = _axis(value, f"{where}.set.{key}")
        else:
            row.fixed[key] = value
    return row


def _axis(values: Any, where: str) -> list[Any]:
    if not isinstance(values, list) or not values:
        raise SweepError(f"{where}: expected a non-empty list of values, got {values!r}")
    if len({format_value(v) for v in values}) < len(values):
        raise SweepError(f"{where}: a value appears twice in {values!r}")
    return values


def _flatten(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise SweepError(f"{where}: expected a mapping of config keys to values, got {raw!r}")
    flat = config_module.flatten(raw)
    for key in flat:
        if not all(key.split(".")):
            raise SweepError(f"{where}: keys must be config keys such as optimizer.lr, got {key!r}")
    return {key: [_number(v) for v in value] if isinstance(value, list) else _number(value)
            for key, value in flat.items()}


def _check_keys(raw: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in raw:
        if key not in allowed:
            raise SweepError(f"{where}{key}: unknown key; allowed: {', '.join(allowed)}")


def _check_seeds(seeds: list[Any], where: str) -> list[int]:
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise SweepError(f"{where}: expected non-negative integers, got {seeds!r}")
    if len(set(seeds)) < len(seeds):
        raise SweepError(f"{where}: a seed appears twice in {seeds!r}")
    return seeds


def _yaml_value(text: str) -> Any:
    try:
        return _number(yaml.safe_load(text)) if text.strip() else ""
    except yaml.YAMLError:
        return text


def _number(value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; a sweep means the number."""
    return float(value) if isinstance(value, str) and _SCIENTIFIC.match(value) else value
