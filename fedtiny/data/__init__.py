"""Data sets, federated partitions and the task interface (see :mod:`fedtiny.data.base`).

Layer 3 (config, data, models): may import errors, trainer, config.
"""

from fedtiny.data import digits, fashion, watch  # noqa: F401  (register the built-in tasks)
from fedtiny.data.base import ClientData, FederatedTask, Split, build_task, register_task, task_names

__all__ = ["ClientData", "FederatedTask", "Split", "build_task", "register_task", "task_names"]
