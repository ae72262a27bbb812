"""Communication graphs and mixing matrices for decentralized training: numpy and networkx only.

A :class:`Topology` is a connected graph on nodes 0..n-1 with a symmetric, doubly stochastic
mixing matrix ``W`` and its spectral gap, or a strongly connected directed graph with a
column-stochastic ``W`` for push-sum; builders make the usual families (``ring``, ``torus``,
``expander``, ``directed_exponential``, ``directed_erdos_renyi``, ...), ``build`` makes one from a
config's name and worker count, and schedules give time-varying topologies such as the one-peer
exponential graph.

>>> import topologies
>>> topologies.ring(16).neighbors(0)
[1, 15]
"""

from topologies.builders import (BUILDERS, build, builder_parameters, complete, directed_erdos_renyi,
                                 directed_exponential, erdos_renyi, expander, exponential, from_matrix,
                                 from_networkx, hypercube, lazy, matrix, ring, star, torus)
from topologies.schedules import (SCHEDULES, Lazy, OnePeerDirectedExponential, OnePeerExponential, Schedule,
                                  StaticSchedule, build_schedule)
from topologies.topology import Topology
from topologies.weights import SCHEMES, column_uniform, max_degree, metropolis_hastings, mixing_matrix, uniform

__all__ = [
    "BUILDERS", "SCHEDULES", "SCHEMES",
    "Topology", "Schedule", "StaticSchedule", "Lazy", "OnePeerExponential", "OnePeerDirectedExponential",
    "build", "build_schedule", "builder_parameters",
    "ring", "torus", "expander", "complete", "star", "hypercube", "exponential", "erdos_renyi",
    "directed_exponential", "directed_erdos_renyi",
    "from_networkx", "from_matrix", "matrix", "lazy",
    "mixing_matrix", "metropolis_hastings", "uniform", "max_degree", "column_uniform",
]
