"""Time-varying topologies: a ``Schedule`` gives the topology of every gossip step t.

A static graph is the constant schedule; the one-peer exponential graph changes its single
partner every step and averages exactly after log2 n steps at one message per worker and step;
its directed form (Stochastic Gradient Push) sends to one node per step, for any n.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import networkx as nx

from topologies import _checks
from topologies.builders import BUILDERS, build, lazy
from topologies.topology import Topology
from topologies.weights import SchemeLike, column_uniform, mixing_matrix, scheme_name


class Schedule(ABC):
    """The topology of step t is ``schedule(t)``; it repeats every ``period`` steps."""

    @abstractmethod
    def __call__(self, t: int) -> Topology:
        """The topology of step ``t`` (t >= 0)."""

    @property
    @abstractmethod
    def period(self) -> int:
        """The number of steps after which the topologies repeat."""

    @property
    def n(self) -> int:
        """The number of workers."""
        return self(0).n

    @property
    def is_static(self) -> bool:
        """Whether every step has the same topology."""
        return self.period == 1

    @staticmethod
    def _step(t: int) -> int:
        return _checks.integer(t, "step t", 0)


class StaticSchedule(Schedule):
    """The same topology at every step.

    >>> from topologies.builders import ring
    >>> StaticSchedule(ring(4))(7).name
    'ring(n=4, weights=metropolis_hastings)'
    """

    def __init__(self, topology: Topology):
        if not isinstance(topology, Topology):
            raise ValueError(f"StaticSchedule needs a Topology, got {type(topology).__name__}")
        self.topology = topology

    def __call__(self, t: int) -> Topology:
        self._step(t)
        return self.topology

    @property
    def period(self) -> int:
        return 1

    def __repr__(self) -> str:
        return f"StaticSchedule({self.topology!r})"


class Lazy(Schedule):
    """``schedule`` with every step's W replaced by ``(W + I) / 2`` (:func:`topologies.lazy`).

    >>> from topologies.builders import ring
    >>> Lazy(StaticSchedule(ring(4)))(0).W[0].round(4).tolist()
    [0.6667, 0.1667, 0.0, 0.1667]
    """

    def __init__(self, schedule: Schedule):
        self.schedule = schedule
        self._snapshots: dict[int, Topology] = {}

    def __call__(self, t: int) -> Topology:
        k = self._step(t) % self.period
        if k not in self._snapshots:
            self._snapshots[k] = lazy(self.schedule(t))
        return self._snapshots[k]

    @property
    def period(self) -> int:
        return self.schedule.period

    def __repr__(self) -> str:
        return f"Lazy({self.schedule!r})"


class _Cycle(Schedule):
    """A schedule that repeats a fixed list of topologies, step t using ``snapshots[t % period]``."""

    def __init__(self, snapshots: list[Topology]):
        self._snapshots = snapshots

    def __call__(self, t: int) -> Topology:
        return self._snapshots[self._step(t) % self.period]

    @property
    def period(self) -> int:
        return len(self._snapshots)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={self.n}, period={self.period})"


class OnePeerExponential(_Cycle):
    """The one-peer exponential graph (Ying et al. 2021), undirected: n must be a power of 2.

    At step t worker i averages with the single partner ``i XOR 2**(t mod log2 n)`` with weight
    1/2 (both the default Metropolis-Hastings and the uniform scheme give 1/2 on a matching;
    ``max_degree`` gives a pure swap that never averages). Step k's matching is the k-th
    dimension of the hypercube, and the product of the W's of any log2 n consecutive steps is
    exactly the averaging matrix J/n. One step alone is a perfect matching, a disconnected graph:
    its Topology is built with ``require_connected=False`` and has spectral gap 0. n = 1 is the
    identity at every step.

    >>> schedule = OnePeerExponential(8)
    >>> schedule.period, schedule(0).neighbors(3), schedule(1).neighbors(3), schedule(2).neighbors(3)
    (3, [2], [1], [7])
    """

    def __init__(self, n: int, weights: SchemeLike = "metropolis_hastings"):
        steps = _checks.log2_exact(n, "one_peer_exponential: n")
        super().__init__([self._matching(n, k, weights) for k in range(max(steps, 1))])  # n = 1: one step

    @staticmethod
    def _matching(n: int, k: int, weights: SchemeLike) -> Topology:
        """Step k's topology: i paired with i XOR 2**k (no pair when n = 1)."""
        graph = nx.Graph()
        graph.add_nodes_from(range(n))
        graph.add_edges_from((i, i ^ (1 << k)) for i in range(n) if i ^ (1 << k) < n)
        name = f"one_peer_exponential(n={n}, weights={scheme_name(weights)}), step {k}: partner i XOR {1 << k}"
        return Topology(graph, mixing_matrix(graph, weights), name=name, require_connected=False)


class OnePeerDirectedExponential(_Cycle):
    """The time-varying directed exponential graph of Stochastic Gradient Push (Assran et al. 2019).

    With m the number of k with 2**k < n, at step t node i sends only to ``(i + 2**(t mod m)) mod n``
    and keeps half of its vector: weight 1/2 on itself and on the single edge (the push-sum weights
    ``1/(out-degree + 1)``), so ``W`` is column-stochastic. Any n >= 1; the period is m (1 for
    n = 1, the identity). One step alone is a union of cycles, built with ``require_connected=False``;
    for n a power of 2 the product of the W's of any m consecutive steps is exactly J/n.

    >>> schedule = OnePeerDirectedExponential(8)
    >>> schedule.period, [schedule(t).out_neighbors(3) for t in range(4)], schedule(1).in_neighbors(3)
    (3, [[4], [5], [7], [4]], [1])
    """

    def __init__(self, n: int):
        n = _checks.integer(n, "one_peer_directed_exponential: n", 1)
        super().__init__([self._shift(n, k) for k in range(max((n - 1).bit_length(), 1))])  # n = 1: one step

    @staticmethod
    def _shift(n: int, k: int) -> Topology:
        """Step k's topology: i sends to i + 2**k mod n (no edge when n = 1)."""
        graph = nx.DiGraph()
        graph.add_nodes_from(range(n))
        graph.add_edges_from((i, (i + (1 << k)) % n) for i in range(n) if n > 1)
        name = f"one_peer_directed_exponential(n={n}), step {k}: i sends to i + {1 << k}"
        return Topology(graph, column_uniform(graph), name=name, require_connected=False)


SCHEDULES = {"one_peer_exponential": OnePeerExponential,
             "one_peer_directed_exponential": OnePeerDirectedExponential}


def build_schedule(name: str, n: int, weights: SchemeLike | None = None, **params: object) -> Schedule:
    """The schedule ``name`` on ``n`` workers: a time-varying one from ``SCHEDULES``, or the
    static schedule of ``build(name, n, weights, **params)``. ``weights=None`` is the graph's
    default (see :func:`topologies.build`).

    >>> build_schedule("one_peer_exponential", 16).period, build_schedule("ring", 16).is_static
    (4, True)
    """
    if name in SCHEDULES:
        _checks.parameters(name, params, [])
        schedule = SCHEDULES[name]
        return schedule(n, **_checks.weights_argument(name, weights, _checks.directed_factory(schedule)))
    _checks.choose("topology", name, {**BUILDERS, **SCHEDULES})  # an unknown name lists all of them
    return StaticSchedule(build(name, n, weights, **params))
