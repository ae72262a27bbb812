"""Tasks (model + data + loss + metric), registered by name."""

from gossip.registry import Registry
from gossip.tasks.base import DataError, DataStream, ShuffledBatches, Task, TaskPlan
from gossip.tasks.language import LanguageModelOptions, LanguageModelTask
from gossip.tasks.random_batches import RandomBatchesOptions, RandomBatchesTask
from gossip.tasks.synthetic import SyntheticOptions, SyntheticTask
from gossip.tasks.vision import ImageClassificationOptions, ImageClassificationTask

TASKS = Registry("task")
TASKS.register("logistic", SyntheticOptions, SyntheticTask)
TASKS.register("least_squares", SyntheticOptions, SyntheticTask)
TASKS.register("lstm", LanguageModelOptions, LanguageModelTask)
TASKS.register("resnet20", ImageClassificationOptions, ImageClassificationTask)
TASKS.register("random", RandomBatchesOptions, RandomBatchesTask)

__all__ = ["TASKS", "DataError", "DataStream", "ShuffledBatches", "Task", "TaskPlan"]
