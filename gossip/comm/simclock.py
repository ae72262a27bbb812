"""A simulated clock: how long the steps of a run would take on a described network.

The network records, for every step, what happened in order (:class:`TrafficLog`): the gradient
computation, each gossip round with the bytes of every directed pair that carried a message, and
each collective with the bytes every worker sent. :class:`SimClock` turns those steps into
per-worker finish times with the rules of docs/networks.md:

- a step starts for worker ``i`` when its previous step finished; its compute takes
  ``compute / speed_i`` seconds (``compute`` measured or given);
- a round posted before the computation (the ``overlap`` order) starts with the step, one posted
  after it when the computation is done; a round never starts before the worker's previous round
  ended;
- rounds are synchronous per edge: worker ``i`` starts sending at ``S_i``, the latest time at
  which it and all the neighbours it exchanges with in this round are ready;
- a worker's messages on one link share it: they all arrive ``latency + bytes / bandwidth`` after
  ``S_i``, with ``bytes`` the sum of its messages on that link; the node-local link of ``groups``
  carries the messages between workers of one group, the main link the others, in parallel;
- the link is full duplex with the same bandwidth each way: the messages into ``i`` on a link
  cannot all have arrived before ``latency + bytes in / bandwidth`` after the first of them left;
- the round ends for ``i`` when it has sent its messages and received all of its neighbours';
- a collective (all-reduce) starts when every worker is ready and takes
  ``bytes sent / bandwidth + 2 (n − 1) latency`` (a ring all-reduce sends ``2 (n − 1) / n`` times
  the vector's size);
- the step ends for ``i`` when its computation and its last round are done; ``sim_time_s`` is the
  latest finish time over the workers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal, Optional, Union

from gossip.registry import option

Pair = tuple[int, int]
#: One thing that happened in a step: ("compute", {worker: seconds or None}),
#: ("round", {(src, dst): bytes}) or ("collective", {worker: bytes}).
Event = tuple[str, dict]

#: A rate or a time as written in the config (a number without a unit is reported, not guessed).
Quantity = Union[str, float]
#: Units as exact fractions, so that ``20us`` is the float nearest to 20 · 10⁻⁶ on every platform.
RATE_UNITS = {"bit/s": Fraction(1, 8), "kbit/s": Fraction(10**3, 8), "Mbit/s": Fraction(10**6, 8),
              "Gbit/s": Fraction(10**9, 8), "Tbit/s": Fraction(10**12, 8), "B/s": Fraction(1),
              "kB/s": Fraction(10**3), "MB/s": Fraction(10**6), "GB/s": Fraction(10**9), "TB/s": Fraction(10**12)}
TIME_UNITS = {"s": Fraction(1), "ms": Fraction(1, 10**3), "us": Fraction(1, 10**6), "µs": Fraction(1, 10**6),
              "ns": Fraction(1, 10**9)}
_QUANTITY = re.compile(r"^\s*(\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+)\s*([^\d\s.].*?)\s*$")


def parse_quantity(text: Any, units: dict[str, Fraction], what: str) -> float:
    """``"10Gbit/s"`` → bytes per second, ``"20us"`` → seconds: a non-negative number and a unit
    of ``units``; a ``ValueError`` naming the allowed units otherwise.

    >>> parse_quantity("10Gbit/s", RATE_UNITS, "a rate"), parse_quantity("20us", TIME_UNITS, "a time")
    (1250000000.0, 2e-05)
    """
    found = _QUANTITY.match(text) if isinstance(text, str) else None
    if found is None or found.group(2) not in units:
        raise ValueError(f"{text!r} is not {what}; write a number and one of the units {', '.join(units)} "
                         f"(e.g. {'20us' if what == 'a time' else '10Gbit/s'})")
    return float(Fraction(found.group(1)) * units[found.group(2)])


def parse_rate(text: Any) -> float:
    """Bytes per second from a rate such as ``10Gbit/s`` or ``1GB/s`` (decimal prefixes)."""
    value = parse_quantity(text, RATE_UNITS, "a rate")
    if value <= 0:
        raise ValueError(f"{text!r}: a bandwidth must be above 0")
    return value


def parse_time(text: Any) -> float:
    """Seconds from a duration such as ``20us``, ``2ms`` or ``0s``."""
    return parse_quantity(text, TIME_UNITS, "a time")


# ---------------------------------------------------------------------------------------------
# The config sections


@dataclass
class GroupsConfig:
    """Workers ``i // size`` share a node: their messages take the node-local link."""

    size: int = option(8, help="workers per node (workers i // size share the node-local link)", ge=1)
    bandwidth: Quantity = option("300Gbit/s", help="node-local link: bandwidth per worker, each direction")
    latency: Quantity = option("2us", help="node-local link: latency per message")


@dataclass
class NetworkConfig:
    """The network that the simulated clock (``sim_time_s``) models; see docs/networks.md."""

    bandwidth: Quantity = option("10Gbit/s", help="each worker's link, full duplex: bit/s, kbit/s, Mbit/s, "
                                             "Gbit/s, Tbit/s, B/s, kB/s, MB/s, GB/s or TB/s")
    latency: Quantity = option("20us", help="per message: s, ms, us or ns")
    groups: Optional[GroupsConfig] = option(None, help="workers that share a fast node-local link")
    compute: Union[Literal["measured"], float] = option(
        "measured", help="seconds of computation per step (at speed 1), or measured: each worker's "
                         "forward and backward pass, timed")
    speed: dict[int, float] = option({}, help="worker: factor, e.g. {3: 0.5}: worker 3 computes at half "
                                              "speed (others 1)")
    overlap: bool = option(True, help="rounds posted before the gradient computation (the overlap "
                                      "order) run during it; false: communication waits for compute")

    def check(self, config: Any) -> None:
        """Raise ``ValueError("key: ...")`` for a unit that does not parse or an unknown worker."""
        for key, section in (("", self), ("groups.", self.groups)):
            if section is not None:
                _reraise(f"{key}bandwidth", parse_rate, section.bandwidth)
                _reraise(f"{key}latency", parse_time, section.latency)
        if self.compute != "measured" and self.compute < 0:
            raise ValueError(f"compute: {self.compute} is out of range; allowed: measured or seconds >= 0")
        for worker, factor in self.speed.items():
            if not 0 <= worker < config.workers:
                raise ValueError(f"speed: worker {worker} does not exist; workers are 0..{config.workers - 1}")
            if factor <= 0:
                raise ValueError(f"speed: worker {worker}'s factor {factor} is out of range; allowed: > 0")


def _reraise(key: str, parse: Any, text: Quantity) -> None:
    try:
        parse(text)
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None


@dataclass(frozen=True, eq=False)
class Link:
    """A link's bandwidth (bytes per second) and latency (seconds); two links are never the same
    link, even with equal numbers (``eq=False``: a link is its own key)."""

    bandwidth: float
    latency: float

    def time(self, nbytes: float) -> float:
        """``latency + nbytes / bandwidth``."""
        return self.latency + nbytes / self.bandwidth


# ---------------------------------------------------------------------------------------------
# Recording and simulating


@dataclass
class TrafficLog:
    """What the workers of one process did in the steps not simulated yet, in order."""

    steps: list[list[Event]] = field(default_factory=list)
    current: list[Event] = field(default_factory=list)

    def round(self, sizes: dict[Pair, int]) -> None:
        """A gossip round: ``sizes[(src, dst)]`` bytes from every local sender."""
        self.current.append(("round", dict(sizes)))

    def collective(self, worker: int, nbytes: int) -> None:
        """``worker`` sent ``nbytes`` in a collective; consecutive calls for different workers are
        the same collective."""
        if not self.current or self.current[-1][0] != "collective" or worker in self.current[-1][1]:
            self.current.append(("collective", {}))
        self.current[-1][1][worker] = nbytes

    def compute(self, seconds: dict[int, float | None]) -> None:
        """The gradient computation of the local workers (measured seconds, or None)."""
        self.current.append(("compute", dict(seconds)))

    def end_step(self) -> None:
        self.steps.append(self.current)
        self.current = []

    def take(self) -> list[list[Event]]:
        """The finished steps, forgotten here."""
        steps, self.steps = self.steps, []
        return steps


def merge(per_process: list[list[list[Event]]]) -> list[list[Event]]:
    """The steps of all workers from every process's :meth:`TrafficLog.take` (all processes record
    the same events in the same order, each for its own workers)."""
    merged = []
    for steps in zip(*per_process):
        events = []
        for parts in zip(*steps):
            kinds = {kind for kind, _ in parts}
            if len(kinds) != 1:
                raise RuntimeError(f"the processes recorded different events in one step: {sorted(kinds)}")
            events.append((parts[0][0], {k: v for _, values in parts for k, v in values.items()}))
        merged.append(events)
    return merged


class SimClock:
    """Per-worker simulated clocks that advance step by step under the rules of the module doc."""

    def __init__(self, config: NetworkConfig, workers: int) -> None:
        self.n = workers
        self.link = Link(parse_rate(config.bandwidth), parse_time(config.latency))
        groups = config.groups
        self.group_link = Link(parse_rate(groups.bandwidth), parse_time(groups.latency)) if groups else None
        self.group_size = groups.size if groups else 1
        self.compute = None if config.compute == "measured" else float(config.compute)
        self.speed = [config.speed.get(i, 1.0) for i in range(workers)]
        self.overlap = config.overlap
        self.finish = [0.0] * workers

    @property
    def time(self) -> float:
        """The simulated time at which the slowest worker finished its last step."""
        return max(self.finish)

    def link_of(self, i: int, j: int) -> Link:
        """The node-local link between two workers of one group, the main link otherwise."""
        if self.group_link is not None and i // self.group_size == j // self.group_size:
            return self.group_link
        return self.link

    def run(self, steps: list[list[Event]]) -> None:
        for events in steps:
            self.step(events)

    def step(self, events: list[Event]) -> None:
        """Advance every worker's clock by one step made of ``events`` (merged over processes)."""
        start = list(self.finish)
        computes = [values for kind, values in events if kind == "compute"]
        measured = computes[0] if computes else {}
        busy = [self._compute_seconds(i, measured.get(i)) for i in range(self.n)]
        computed = [s + c for s, c in zip(start, busy)]
        if not self.overlap:  # every round waits for the computation: move it to the front
            events = [e for e in events if e[0] == "compute"] + [e for e in events if e[0] != "compute"]
        done, after_compute = list(start), False
        for kind, values in events:
            if kind == "compute":
                after_compute = True
                continue
            ready = [max(d, c) if after_compute else d for d, c in zip(done, computed)]
            done = self.round(ready, values) if kind == "round" else self.collective(ready, values)
        self.finish = [max(d, c) for d, c in zip(done, computed)]

    def _compute_seconds(self, worker: int, measured: float | None) -> float:
        seconds = self.compute if self.compute is not None else (measured or 0.0)
        return seconds / self.speed[worker]

    def round(self, ready: list[float], sizes: dict[Pair, int]) -> list[float]:
        """When each worker's round ends, given when it is ready and the bytes of every message."""
        peers: list[set[int]] = [set() for _ in range(self.n)]
        for src, dst in sizes:
            peers[src].add(dst)
            peers[dst].add(src)
        begin = [max([ready[i]] + [ready[j] for j in peers[i]]) for i in range(self.n)]
        out: dict[tuple[int, Link], float] = {}
        into: dict[tuple[int, Link], float] = {}
        first_in: dict[tuple[int, Link], float] = {}
        for (src, dst), nbytes in sizes.items():
            link = self.link_of(src, dst)
            out[(src, link)] = out.get((src, link), 0.0) + nbytes
            into[(dst, link)] = into.get((dst, link), 0.0) + nbytes
            first_in[(dst, link)] = min(first_in.get((dst, link), begin[src]), begin[src])
        sent = {(src, link): begin[src] + link.time(nbytes) for (src, link), nbytes in out.items()}
        end = list(begin)
        for (src, dst) in sizes:
            arrival = sent[(src, self.link_of(src, dst))]  # the sender's messages on a link end together
            end[src] = max(end[src], arrival)
            end[dst] = max(end[dst], arrival)
        for (dst, link), nbytes in into.items():
            end[dst] = max(end[dst], first_in[(dst, link)] + link.time(nbytes))
        return [end[i] if peers[i] else ready[i] for i in range(self.n)]

    def collective(self, ready: list[float], sent: dict[int, int]) -> list[float]:
        """A ring all-reduce over all workers: starts when all are ready, ends together."""
        link = self.group_link if self.group_link is not None and self.n <= self.group_size else self.link
        duration = max(sent.values(), default=0) / link.bandwidth + 2 * (self.n - 1) * link.latency
        begin = max(ready)
        return [begin + duration] * self.n


def planned_step(kinds: tuple[str, ...], per_step: list[float], neighbours: list[list[int]]) -> list[Event]:
    """The events of one step for the dry run: ``kinds`` in order (:meth:`Algorithm.step_events`),
    worker ``i``'s ``per_step[i]`` bytes split evenly over its rounds and its neighbours (the time
    of consecutive rounds depends only on their total bytes when every worker is alike)."""
    rounds = kinds.count("round")
    events: list[Event] = []
    for kind in kinds:
        if kind == "compute":
            events.append(("compute", {}))
        elif kind == "round":
            events.append(("round", {(i, j): per_step[i] / rounds / len(nbrs)
                                     for i, nbrs in enumerate(neighbours) for j in nbrs}))
        else:
            events.append(("collective", dict(enumerate(per_step))))
    return events
