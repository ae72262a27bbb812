"""Argument checks shared by the builders, the weight schemes and the schedules.

Each check raises a one-line ``ValueError`` that names the argument, what it got and what is
allowed, so a config or command-line mistake reads as a sentence rather than a traceback.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

T = TypeVar("T")


def integer(value: object, what: str, minimum: int) -> int:
    """``value`` as an int, if it is an integer (not a bool) at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def log2_exact(n: object, what: str) -> int:
    """The k with ``n == 2**k``, if ``n`` is a power of two (1 = 2**0 included)."""
    n = integer(n, what, 1)
    if n & (n - 1):
        raise ValueError(f"{what} must be a power of 2 (1, 2, 4, 8, ...), got {n}")
    return n.bit_length() - 1


def probability(value: object, what: str) -> float:
    """``value`` as a float, if it is a real number in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value <= 1:
        raise ValueError(f"{what} must be a number in (0, 1], got {value!r}")
    return float(value)


def choose(kind: str, name: object, options: Mapping[str, T]) -> T:
    """``options[name]``, or an error listing the allowed names."""
    if not isinstance(name, str) or name not in options:
        raise ValueError(f"unknown {kind} {name!r}; allowed: {', '.join(sorted(options))}")
    return options[name]


def parameters(owner: str, given: Iterable[str], allowed: Iterable[str]) -> None:
    """Fail on the first name in ``given`` that ``owner`` does not take, listing those it takes."""
    allowed = list(allowed)
    for name in given:
        if name not in allowed:
            takes = f"it takes: {', '.join(allowed)}" if allowed else "it takes none besides n and weights"
            raise ValueError(f"{owner} does not take parameter {name!r}; {takes}")


def weights_argument(owner: str, weights: object, directed: bool) -> dict[str, object]:
    """The ``weights=`` keyword for ``owner`` (none for ``None``, its default); a scheme for a
    directed graph, whose weights are always ``1/(out-degree + 1)``, is an error."""
    if weights is None:
        return {}
    if directed:
        raise ValueError(f"{owner}: weights are 1/(out-degree + 1) on a directed graph; "
                         f"the weights setting applies to undirected graphs only")
    return {"weights": weights}


def directed_factory(factory: Callable[..., object]) -> bool:
    """Whether a builder or schedule makes directed graphs: those take no ``weights`` parameter."""
    return "weights" not in inspect.signature(factory).parameters
