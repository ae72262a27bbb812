"""gossip: decentralized training for PyTorch.

``n`` workers each keep a model and a private data shard and talk only to their neighbours in a
graph (see the sibling package ``topologies``). Everything is importable for use in your own
training loop: build a :class:`Network`, one :class:`Worker` per model, an algorithm from
:mod:`gossip.algorithms`, and call ``algorithm.step(t, lr, compute_gradients)``. In a script that
``torchrun`` starts with one model per process, :class:`DecentralizedOptimizer` wraps the
script's own optimizer instead.
"""

from gossip.algorithms import ALGORITHMS, DPSGD, Algorithm, AllReduce
from gossip.config import Config
from gossip.train.decentralized import DecentralizedOptimizer
from gossip.algorithms.optim import OptimizerConfig
from gossip.registry import ConfigError
from gossip.config import load as load_config
from gossip.comm.messages import Network
from gossip.tasks import TASKS, Task
from gossip.train.trainer import Trainer
from gossip.algorithms.worker import Worker

__all__ = ["ALGORITHMS", "TASKS", "Algorithm", "AllReduce", "Config", "ConfigError", "DPSGD",
           "DecentralizedOptimizer", "Network", "OptimizerConfig", "Task", "Trainer", "Worker", "load_config"]
