"""The task catalogue: the only code a workqueue worker will run."""

from task_def.progress import report_progress
from task_def.registry import (
    CATALOGUE,
    InvalidParams,
    Param,
    Task,
    TaskDefError,
    UnknownTask,
    by_path,
    get_task,
)
from workqueue.errors import PermanentError

__all__ = [
    "CATALOGUE",
    "InvalidParams",
    "Param",
    "PermanentError",
    "Task",
    "TaskDefError",
    "UnknownTask",
    "by_path",
    "get_task",
    "report_progress",
]
