"""Tasks (model + data + loss + metric), registered by name."""

from gossip.config import Registry
from gossip.tasks.base import DataStream, ShuffledBatches, Task
from gossip.tasks.synthetic import SyntheticOptions, SyntheticTask

TASKS = Registry("task")
TASKS.register("logistic", SyntheticOptions, SyntheticTask)
TASKS.register("least_squares", SyntheticOptions, SyntheticTask)

__all__ = ["TASKS", "DataStream", "ShuffledBatches", "Task"]
