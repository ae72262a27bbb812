"""The typed configuration of a run: dataclasses, YAML loading, ``--set`` overrides, validation.

A config is plain data (``yaml.safe_load``) checked against the dataclasses below before anything
starts or is written. Every component is a section ``{name: ..., <its keys>}`` (or its name alone)
whose name a :class:`~gossip.registry.Registry` resolves: ``algorithm`` and ``task`` are parsed
against the ``Options`` dataclass of the class they name; ``topology``, ``optimizer``,
``lr_schedule`` and a codec collect their other keys and check them against the signature of the
function or class they name. A new component brings its own keys without touching this file.
Every error is one :class:`ConfigError` line that names the key path and what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Optional

import networkx as nx
import yaml

import topologies as _topologies

from gossip.algorithms import ALGORITHMS
from gossip.comm.faults import FaultsConfig
from gossip.algorithms.optim import LRScheduleConfig, OptimizerConfig
from gossip.registry import ConfigError, Registry, check_keywords, keywords_field, option, suggest
from gossip.comm.simclock import NetworkConfig
from gossip.tasks import TASKS

__all__ = ["Config", "ConfigError", "FaultsConfig", "LRScheduleConfig", "NetworkConfig", "OptimizerConfig",
           "RunDirConfig", "TopologyConfig", "TrainConfig", "apply_overrides", "dump", "fields_reference", "from_dict",
           "load", "parse_algorithm", "reference_markdown", "to_dict"]

#: The registries whose entries a config section names (``algorithm.name``, ``task.name``).
REGISTRIES: dict[str, Registry] = {"algorithm": ALGORITHMS, "task": TASKS}


def registry_section(registry_name: str, default_name: str, help: str = "") -> Any:
    """A field whose keys are those of the options dataclass registered under its ``name`` key."""
    metadata = {"help": help, "bounds": {}, "registry": registry_name, "default_name": default_name}
    return field(default_factory=lambda: _default_of(registry_name, default_name), metadata=metadata)


def _default_of(registry_name: str, name: str) -> Any:
    return REGISTRIES[registry_name].options(name, registry_name)()


# ---------------------------------------------------------------------------------------------
# The run's sections


#: The graphs by name: every builder and schedule of :mod:`topologies`, or ``module.path:function``.
TOPOLOGIES = Registry("topology", base=None, functions=True)
for _name, _builder in {**_topologies.BUILDERS, **_topologies.SCHEDULES}.items():
    TOPOLOGIES.register(_name, _builder)


@dataclass
class TopologyConfig:
    """The communication graph on ``workers`` nodes: a built-in graph, a mixing matrix read from a
    file, or a function of your own."""

    name: str = option("ring", help=f"{' | '.join(TOPOLOGIES.entries)}, or module.path:function of "
                                    f"(n, ...) returning a networkx Graph or DiGraph or a topologies.Topology")
    weights: Optional[Literal["metropolis_hastings", "uniform", "max_degree"]] = option(
        None, help="how W is made from an undirected graph (default metropolis_hastings); "
                   "directed graphs always use 1/(out-degree + 1)")
    lazy: bool = option(False, help="mix with (W + I)/2, whose eigenvalues are all >= 0 (lets d2 run on "
                                    "rings, tori and hypercubes) at about half the mixing speed")
    options: dict[str, Any] = keywords_field(
        help="any other key is a parameter of the graph: torus rows, cols; expander degree, seed; "
             "erdos_renyi and directed_erdos_renyi p, seed; matrix path (.npy or text); your function's "
             "keywords. A seed defaults to the run's")

    def check_keywords(self, path: str, parse_dataclass: Any) -> None:
        """The keys must be parameters of the graph's builder or function."""
        check_keywords(TOPOLOGIES.implementation(self.name, f"{path}name"), self, path,
                       reserved=("n", "dim", "weights"), require=False)

    def build(self, workers: int, run_seed: int) -> "_topologies.Schedule":
        """The topology schedule for ``workers`` workers (a static graph is a constant schedule),
        built once: checking the config, the dry run and the trainer share it."""
        key = repr((workers, run_seed, self.name, self.weights, self.lazy, sorted(self.options.items())))
        built = self.__dict__.setdefault("_built", {})
        if key not in built:
            built[key] = self._build(workers, run_seed)
        return built[key]

    def _build(self, workers: int, run_seed: int) -> "_topologies.Schedule":
        builder = TOPOLOGIES.implementation(self.name)
        params = dict(self.options)
        if "seed" in inspect.signature(builder).parameters:
            params.setdefault("seed", run_seed)  # a random graph's default seed is the run's
        if self.name in TOPOLOGIES.entries:
            schedule = _topologies.build_schedule(self.name, workers, weights=self.weights, **params)
        else:
            schedule = _user_schedule(self.name, builder(workers, **params), self.weights, workers)
        return _topologies.Lazy(schedule) if self.lazy else schedule


def _user_schedule(name: str, made: Any, weights: Optional[str], workers: int) -> "_topologies.Schedule":
    """What a user's topology function returned, as a schedule on ``workers`` nodes."""
    if isinstance(made, nx.Graph):
        made = _topologies.from_networkx(made, weights)
    elif weights is not None:
        raise ValueError(f"weights: {name} returned a {type(made).__name__}, which has its weights; "
                         f"weights applies to a networkx graph")
    if isinstance(made, _topologies.Topology):
        made = _topologies.StaticSchedule(made)
    if not isinstance(made, _topologies.Schedule):
        raise ValueError(f"name: {name} returned {type(made).__name__}; expected a networkx Graph or DiGraph, "
                         f"a topologies.Topology or a topologies.Schedule")
    if made.n != workers:
        raise ValueError(f"name: {name} returned a graph on {made.n} nodes; expected workers = {workers}")
    return made


@dataclass
class TrainConfig:
    """How long to train and how often to measure and save."""

    steps: Optional[int] = option(None, help="number of steps (or give epochs)", ge=1)
    epochs: Optional[float] = option(None, help="number of epochs of each worker's shard", gt=0)
    batch_size: int = option(32, help="batch size per worker", ge=1)
    eval_every: int = option(100, help="measure and log every this many steps", ge=1)
    checkpoint_every: int = option(0, help="save a checkpoint every this many steps (0: only at the end)", ge=0)
    checkpoint_every_s: float = option(0.0, help="also save a checkpoint when this many seconds of wall time "
                                                 "passed since the last one (0: off)", ge=0)
    local_eval: bool = option(True, help="also evaluate every worker's own model (mean and std)")


@dataclass
class RunDirConfig:
    """Where the run writes its config, metrics and checkpoints."""

    dir: str = option("runs/default", help="run directory")
    timeout_s: float = option(600.0, help="a process that does not answer within this many seconds "
                                          "is reported lost and the run stops", gt=0)
    resume: Literal["auto", "never"] = option(
        "auto", help="auto: a run directory holding this config continues from its newest complete "
                     "checkpoint; never: a new directory (DIR-2, ...) is used, or an explicit --run-dir is refused")
    keep_checkpoints: int = option(2, help="keep the newest this many complete checkpoints (0: keep all)", ge=0)


@dataclass
class Config:
    """One experiment."""

    seed: int = option(0, help="seeds every generator (with the worker or edge id)", ge=0)
    workers: int = option(4, help="number of workers n (independent of the number of processes)", ge=1)
    topology: TopologyConfig = field(default_factory=TopologyConfig)
    algorithm: Any = registry_section("algorithm", "dpsgd", help="the decentralized algorithm")
    task: Any = registry_section("task", "logistic", help="model, data, loss and metric")
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    lr_schedule: LRScheduleConfig = field(default_factory=LRScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunDirConfig = field(default_factory=RunDirConfig)
    network: Optional[NetworkConfig] = option(None, help="the network that sim_time_s models "
                                                         "(docs/networks.md); none: no simulated clock")
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    backend: Literal["auto", "gloo", "nccl"] = option(
        "auto", help="torch.distributed backend: gloo on CPU, nccl with one GPU per process")


# ---------------------------------------------------------------------------------------------
# Loading


def load(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Read a YAML file (or start from defaults), apply ``key=value`` overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({_one_line(exc)})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(raw).__name__}")
    return from_dict(apply_overrides(raw, overrides))


def apply_overrides(raw: Mapping[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``a.b.c=value`` set (value parsed as YAML).

    A run's length is one of ``train.steps`` and ``train.epochs``: setting one drops the other,
    unless ``raw`` itself sets both (that stays an error)."""
    result = _deep_copy(raw)
    train = raw.get("train")
    both_in_raw = isinstance(train, Mapping) and all(train.get(k) is not None for k in _LENGTH_KEYS.values())
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set optimizer.lr=0.1")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        node = result
        parts = key.strip().split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif isinstance(child, str):  # a section's short form, its name alone: codec: sign
                child = node[part] = {"name": child}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key.strip()!r}: {'.'.join(parts[: i + 1])} is not a section")
            node = child
        node[parts[-1]] = value
        other = _LENGTH_KEYS.get(key.strip())
        if other is not None and value is not None and not both_in_raw:
            node.pop(other, None)
    return result


#: Top-level keys of older configs, with what replaced them.
_RENAMED = {"schedule": "renamed to lr_schedule (add name: warmup_step to keep the warm-up and step decay)"}

_LENGTH_KEYS = {"train.steps": "epochs", "train.epochs": "steps"}  # each key: the one it replaces


def from_dict(raw: Mapping[str, Any]) -> Config:
    """Parse and validate a plain dict into a :class:`Config`."""
    for old, message in _RENAMED.items():
        if old in raw:
            raise ConfigError(f"{old}: {message}")
    config = _parse_dataclass(Config, raw, "")
    _check_combinations(config)
    return config


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain data (for YAML output and checkpoints); the keywords that a section
    collected for its class are keys of the section again."""
    result: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.metadata.get("keywords"):
            result.update(copy.deepcopy(value))
        elif dataclasses.is_dataclass(value):
            result[f.name] = to_dict(value)
        else:
            result[f.name] = copy.deepcopy(value)
    return result


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping as ``{"dotted.key": value}``, the keys of ``--set``.

    >>> flatten({"optimizer": {"lr": 0.1, "betas": [0.9, 0.95]}, "seed": 0})
    {'optimizer.lr': 0.1, 'optimizer.betas': [0.9, 0.95], 'seed': 0}
    """
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def format_value(value: Any) -> str:
    """A value as ``--set`` reads it back (YAML): strings as written unless they would read as
    something else, everything else as JSON (true, null, 0.1, [10, 20])."""
    if isinstance(value, str) and yaml.safe_load(value) == value:
        return value
    return json.dumps(value)


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The dotted keys whose values differ between the :func:`flatten`-ed config a run directory
    holds (``old``) and the one asked for (``new``), but ``run.dir`` (in ``new``'s order, then keys
    only ``old`` has): the one rule for "is this directory the same run?" of the command line and
    the sweep tool, each of which allows its own keys to change."""
    return [key for key in [*new, *(k for k in old if k not in new)]
            if key != "run.dir" and (key in old, old.get(key)) != (key in new, new.get(key))]


def dump(config: Config) -> str:
    """The config as YAML that :func:`load` reads back into an equal config."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def fields_reference() -> list[tuple[str, str, str, str]]:
    """Every key as ``(path, type, default, help)``, including each algorithm's and task's options."""
    rows: list[tuple[str, str, str, str]] = []

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            path = f"{prefix}{f.name}"
            registry = f.metadata.get("registry")
            if registry:
                for name, implementation in sorted(REGISTRIES[registry].entries.items()):
                    walk(implementation.Options, f"{path}[{name}].")
            elif f.metadata.get("keywords"):
                rows.append((f"{prefix}KEYWORD", "any", "(none)", f.metadata["help"]))
                for name, builtin in getattr(cls, "BUILTINS", {}).items():
                    walk(builtin, f"{prefix.rstrip('.')}[{name}].")
            elif _section_class(hints[f.name]) is not None:
                walk(_section_class(hints[f.name]), f"{path}.")
            else:
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                rows.append((path, _type_name(hints[f.name]), repr(default), f.metadata.get("help", "")))

    walk(Config, "")
    return rows


def reference_markdown() -> str:
    """docs/configuration.md: every key with its type, default and meaning (generated, so that it
    cannot drift from the dataclasses; ``scripts/config_reference.py`` writes it)."""
    lines = ["# Configuration reference", "",
             "Generated from the config dataclasses by `python scripts/config_reference.py`; a test fails",
             "when this page is stale. Keys are set in the YAML file or with `--set key=value`.",
             "`algorithm[NAME].key` and `task[NAME].key` exist when `algorithm.name` / `task.name` is NAME;",
             "`lr_schedule[NAME].key` when `lr_schedule.name` is the built-in NAME. The `topology`, `codec`,",
             "`optimizer` and `lr_schedule` sections also take the parameters of the function or class they",
             "name (`optimizer.KEYWORD`): `rows` and `cols` of `torus`, `fraction` of `topk`, `momentum` and",
             "`nesterov` of `sgd`, `step_size` of `StepLR`, ... Every `name` may also be `module.path:Name`, a",
             "component of your own (see [extending.md](extending.md)).", ""]
    section = None
    for path, type_name, default, help_text in fields_reference():
        top = path.split(".")[0].split("[")[0] if ("." in path or "[" in path) else "top level"
        if top != section:
            section = top
            lines += ["", f"## {top}", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        lines.append(f"| `{path}` | {type_name.replace('|', '&#124;')} | `{default}` | {help_text.replace('|', '&#124;')} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Parsing machinery


def parse_algorithm(raw: Mapping[str, Any], path: str = "algorithm") -> Any:
    """An ``algorithm`` section on its own (``{"name": ..., **options}``), parsed and checked as in
    a YAML file: the same one-line :class:`ConfigError` for an unknown name, key or value."""
    options = _parse_registry_section("algorithm", "dpsgd", raw, path)
    check = getattr(options, "check", None)
    if check is not None:
        try:
            check(None)
        except ValueError as exc:
            raise ConfigError(f"{path}.{_one_line(exc)}") from None
    return options


def _parse_dataclass(cls: type, raw: Any, path: str) -> Any:
    where = path.rstrip(".") or "config"
    if raw is None:
        raw = {}
    if isinstance(raw, str) and "name" in {f.name for f in dataclasses.fields(cls)}:
        raw = {"name": raw}  # a section's short form: its name alone
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping of keys, got {_describe(raw)}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("keywords")}
    keywords = [f.name for f in dataclasses.fields(cls) if f.metadata.get("keywords")]
    values: dict[str, Any] = {name: {} for name in keywords}
    for key in raw:
        if key not in known:
            if keywords and isinstance(key, str) and key.isidentifier():
                values[keywords[0]][key] = _keyword_value(raw[key])
                continue
            raise ConfigError(f"{path}{_show_key(key)}: unknown key{suggest(str(key), known)}; "
                              f"allowed in {where}: {', '.join(known)}")
    for name, f in known.items():
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{path}{name}: missing; {where} requires it (it has no default)")
            continue
        key_path = f"{path}{name}"
        registry = f.metadata.get("registry")
        if registry:
            values[name] = _parse_registry_section(registry, f.metadata["default_name"], raw[name], key_path)
        elif _section_class(hints[name]) is not None:
            optional = not dataclasses.is_dataclass(hints[name])
            values[name] = None if optional and raw[name] is None else \
                _parse_dataclass(_section_class(hints[name]), raw[name], key_path + ".")
        else:
            values[name] = _parse_value(hints[name], raw[name], key_path)
            _check_bounds(values[name], f.metadata.get("bounds", {}), key_path)
    result = cls(**values)
    if keywords:
        result.check_keywords(path, _parse_dataclass)
    return result


def _keyword_value(value: Any) -> Any:
    """A class keyword as plain data, with YAML 1.1's strings such as ``1e-8`` read as numbers."""
    if isinstance(value, str) and _SCIENTIFIC.match(value):
        return float(value)
    if isinstance(value, list):
        return [_keyword_value(v) for v in value]
    return value


def _section_class(hint: Any) -> type | None:
    """The dataclass of a section field (``Section`` or ``Optional[Section]``), else None."""
    if dataclasses.is_dataclass(hint):
        return hint
    inner = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and len(inner) == 1
    return inner[0] if optional and dataclasses.is_dataclass(inner[0]) else None


def _parse_registry_section(registry_name: str, default_name: str, raw: Any, path: str) -> Any:
    registry = REGISTRIES[registry_name]
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: expected a mapping with a 'name' key, got {_describe(raw)}")
    name = raw.get("name", default_name)
    if not isinstance(name, str):
        raise ConfigError(f"{path}.name: expected a string, got {_describe(name)}")
    return _parse_dataclass(registry.options(name, f"{path}.name"), raw, path + ".")


def _parse_value(hint: Any, value: Any, path: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for alternative in inner[:-1]:
            try:
                return _parse_value(alternative, value, path)
            except ConfigError:
                pass
        try:
            return _parse_value(inner[-1], value, path)
        except ConfigError:
            if len(inner) == 1:
                raise
        raise ConfigError(f"{path}: {value!r} is not allowed; allowed: {' or '.join(map(_type_name, inner))}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not allowed{suggest(str(value), args)}; "
                              f"allowed: {', '.join(map(str, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {_describe(value)}")
        return [_parse_value(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, e.g. {{3: 0.5}}, got {_describe(value)}")
        return {_parse_value(args[0], k, f"{path} key {k!r}"): _parse_value(args[1], v, f"{path}.{k}")
                for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {_describe(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {_describe(value)}")
        return value
    if hint is float:
        if isinstance(value, str) and _SCIENTIFIC.match(value):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {_describe(value)}")
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{path}: expected a finite number, got {value}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {_describe(value)}")
        return value
    raise TypeError(f"unsupported config type {hint!r} at {path}")


_SCIENTIFIC = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _check_bounds(value: Any, bounds: dict[str, float], path: str) -> None:
    if value is None or not bounds:
        return
    checks = {"gt": (lambda v, b: v > b, ">"), "ge": (lambda v, b: v >= b, ">="),
              "lt": (lambda v, b: v < b, "<"), "le": (lambda v, b: v <= b, "<=")}
    for key, bound in bounds.items():
        ok, symbol = checks[key]
        if not ok(value, bound):
            allowed = " and ".join(f"{checks[k][1]} {b}" for k, b in bounds.items())
            raise ConfigError(f"{path}: {value} is out of range; allowed: {allowed}")


def _check_combinations(config: Config) -> None:
    train = config.train
    if (train.steps is None) == (train.epochs is None):
        raise ConfigError("train: set exactly one of train.steps and train.epochs")
    try:
        schedule = config.topology.build(config.workers, config.seed)
    except ValueError as exc:
        raise ConfigError(f"topology: {_one_line(exc)} (workers = {config.workers})") from None
    implementation = REGISTRIES["algorithm"].implementation(config.algorithm.name)
    _reraise_with_path(lambda _: implementation.check_topology(schedule, config.algorithm.name), config, "algorithm")
    check = getattr(config.algorithm, "check", None)
    if check is not None:
        _reraise_with_path(check, config, "algorithm")
    check = getattr(config.task, "check", None)
    if check is not None:
        _reraise_with_path(check, config, "task")
    if config.network is not None:
        _reraise_with_path(config.network.check, config, "network")
    _reraise_with_path(lambda _: implementation.check_link_drop(config.faults.link_drop, config.algorithm.name),
                       config, "faults")


def _reraise_with_path(check: Any, config: Config, section: str) -> None:
    try:
        check(config)
    except ValueError as exc:
        raise ConfigError(f"{section}.{_one_line(exc)}") from None


def _show_key(key: Any) -> str:
    """A key as written when it is a plain word, quoted when it is empty, not a string or holds
    spaces or control characters (so that ``: unknown key`` never names an invisible key)."""
    text = str(key)
    plain = isinstance(key, str) and text.isprintable() and text and not any(c.isspace() for c in text)
    return text if plain else repr(key)


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if value is not None else "nothing (null)"


def _type_name(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args if a is not type(None)) + " | null"
    if origin is Literal:
        return " | ".join(map(str, args))
    if origin is list:
        return f"list[{_type_name(args[0])}]"
    if origin is dict:
        return f"dict[{_type_name(args[0])}, {_type_name(args[1])}]"
    return getattr(hint, "__name__", str(hint))


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _deep_copy(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in raw.items()}
