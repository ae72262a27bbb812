"""Tasks (model + data + loss + metric), registered by name."""

from gossip.registry import Registry
from gossip.tasks.base import DataError, DataStream, ShuffledBatches, Task, TaskPlan
from gossip.tasks.language import LanguageModelTask
from gossip.tasks.random_batches import RandomBatchesTask
from gossip.tasks.synthetic import SyntheticTask
from gossip.tasks.vision import ImageClassificationTask

TASKS = Registry("task", Task)
TASKS.register("logistic", SyntheticTask)
TASKS.register("least_squares", SyntheticTask)
TASKS.register("lstm", LanguageModelTask)
TASKS.register("resnet20", ImageClassificationTask)
TASKS.register("random", RandomBatchesTask)

__all__ = ["TASKS", "DataError", "DataStream", "ShuffledBatches", "Task", "TaskPlan"]
