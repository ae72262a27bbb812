"""Decentralized algorithms behind one interface (:class:`Algorithm`), registered by name."""

from gossip.algorithms.allreduce import AllReduce, AllReduceOptions
from gossip.algorithms.base import Algorithm
from gossip.algorithms.choco import Choco, ChocoOptions
from gossip.algorithms.d2 import D2, D2Options
from gossip.algorithms.deepsqueeze import DeepSqueeze, DeepSqueezeOptions
from gossip.algorithms.dpsgd import DPSGD, DPSGDOptions
from gossip.algorithms.gradient_tracking import GradientTracking, GradientTrackingOptions
from gossip.algorithms.local import Local, LocalOptions
from gossip.algorithms.moniqua import Moniqua, MoniquaOptions
from gossip.algorithms.powergossip import PowerGossip, PowerGossipOptions
from gossip.algorithms.qgm import QGM, QGMOptions
from gossip.algorithms.sgp import SGP, SGPOptions
from gossip.registry import Registry

ALGORITHMS = Registry("algorithm", Algorithm)
ALGORITHMS.register("dpsgd", DPSGD)
ALGORITHMS.register("allreduce", AllReduce)
ALGORITHMS.register("local", Local)
ALGORITHMS.register("choco", Choco)
ALGORITHMS.register("deepsqueeze", DeepSqueeze)
ALGORITHMS.register("moniqua", Moniqua)
ALGORITHMS.register("powergossip", PowerGossip)
ALGORITHMS.register("gradient_tracking", GradientTracking)
ALGORITHMS.register("d2", D2)
ALGORITHMS.register("qgm", QGM)
ALGORITHMS.register("sgp", SGP)

__all__ = ["ALGORITHMS", "Algorithm", "AllReduce", "AllReduceOptions", "Choco", "ChocoOptions", "D2",
           "D2Options", "DPSGD", "DPSGDOptions", "DeepSqueeze", "DeepSqueezeOptions", "GradientTracking",
           "GradientTrackingOptions", "Local", "LocalOptions", "Moniqua", "MoniquaOptions", "PowerGossip",
           "PowerGossipOptions", "QGM", "QGMOptions", "SGP", "SGPOptions"]
