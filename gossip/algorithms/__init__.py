"""Decentralized algorithms behind one interface (:class:`Algorithm`), registered by name."""

from gossip.algorithms.allreduce import AllReduce, AllReduceOptions
from gossip.algorithms.base import Algorithm
from gossip.algorithms.dpsgd import DPSGD, DPSGDOptions
from gossip.algorithms.local import Local, LocalOptions
from gossip.config import Registry

ALGORITHMS = Registry("algorithm")
ALGORITHMS.register("dpsgd", DPSGDOptions, DPSGD)
ALGORITHMS.register("allreduce", AllReduceOptions, AllReduce)
ALGORITHMS.register("local", LocalOptions, Local)

__all__ = ["ALGORITHMS", "Algorithm", "AllReduce", "DPSGD"]
