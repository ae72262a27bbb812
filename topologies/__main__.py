"""Print a topology's summary: ``python -m topologies NAME [PARAMS...] [--weights S] [--seed S] [--step T]``.

PARAMS are the required parameters of the builder (or schedule) in signature order, e.g.
``ring 16``, ``torus 4 4``, ``expander 16 4 --seed 1``, ``one_peer_exponential 8 --step 2``,
``directed_exponential 16``. ``--weights`` is for undirected graphs only.
Bad input prints one ``error: ...`` line on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Callable
from typing import NoReturn

from topologies import _checks
from topologies.builders import BUILDERS
from topologies.schedules import SCHEDULES, Schedule, StaticSchedule
from topologies.topology import Topology
from topologies.weights import SCHEMES

FACTORIES: dict[str, Callable[..., Topology | Schedule]] = {**BUILDERS, **SCHEDULES}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse's own errors: one line too
        _fail(message)


def _fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _required(factory: Callable[..., object]) -> list[inspect.Parameter]:
    """The parameters without a default, in order: the positional arguments of the command line."""
    parameters = inspect.signature(factory, eval_str=True).parameters.values()
    return [p for p in parameters if p.default is inspect.Parameter.empty]


def _usage(name: str) -> str:
    takes = inspect.signature(FACTORIES[name]).parameters
    options = " [--seed S]" * ("seed" in takes) + " [--step T]" * (name in SCHEDULES)
    return f"  {name} {' '.join(p.name for p in _required(FACTORIES[name]))}{options}"


def _parse(name: str, parameter: inspect.Parameter, text: str) -> int | float:
    """``text`` as the int or float that ``parameter`` is annotated with."""
    kind = parameter.annotation
    try:
        return kind(text)
    except ValueError:
        expected = "an integer" if kind is int else "a number"
        raise ValueError(f"{name}: {parameter.name} must be {expected}, got {text!r}") from None


def _topology(args: argparse.Namespace) -> Topology:
    """The topology (at ``args.step`` for a schedule) that the parsed command line asks for."""
    factory = _checks.choose("topology", args.name, FACTORIES)
    required = _required(factory)
    if len(args.params) != len(required):
        names = " ".join(p.name for p in required)
        raise ValueError(f"{args.name} takes {len(required)} parameter(s) ({names}), got {len(args.params)}")
    kwargs = {p.name: _parse(args.name, p, text) for p, text in zip(required, args.params)}
    if args.seed is not None:
        if "seed" not in inspect.signature(factory).parameters:
            raise ValueError(f"{args.name} takes no seed; it is not a random graph")
        kwargs["seed"] = args.seed
    made = factory(**kwargs, **_checks.weights_argument(args.name, args.weights, _checks.directed_factory(factory)))
    schedule = made if isinstance(made, Schedule) else StaticSchedule(made)
    return schedule(args.step)


def main(argv: list[str] | None = None) -> None:
    """Parse ``argv``, print the topology's ``describe()``; bad input exits 2 with one line."""
    parser = _Parser(prog="python -m topologies", formatter_class=argparse.RawDescriptionHelpFormatter,
                     description="Print a topology: degrees, spectral gap, slem and weights.",
                     epilog="topologies and their parameters:\n" + "\n".join(map(_usage, FACTORIES)))
    parser.add_argument("name", help="the topology, one of those listed below")
    parser.add_argument("params", nargs="*", help="its parameters, in the order listed below")
    parser.add_argument("--weights", help=f"weight scheme of an undirected graph: {', '.join(SCHEMES)} "
                                           f"(default metropolis_hastings; directed graphs: 1/(out-degree + 1))")
    parser.add_argument("--seed", type=int, help="graph seed of the random graphs (expander, erdos_renyi, "
                                                 "directed_erdos_renyi; default 0)")
    parser.add_argument("--step", type=int, default=0, help="step t of a time-varying schedule (default 0)")
    args = parser.parse_args(argv)
    try:
        print(_topology(args).describe())
    except ValueError as exc:
        _fail(str(exc))


if __name__ == "__main__":
    main()
