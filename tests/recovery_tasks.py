"""Tasks for tests/test_recovery.py; workers see them only when a test names this module in
WORKQUEUE_EXTRA_TASKS."""

from __future__ import annotations

import os
import time

from task_def import report_progress
from task_def.registry import Param, Task


def mark_then_progress(marker: str, seconds: float = 0.0) -> int:
    """Appends its pid to ``marker``, works ``seconds``, then reports half done, naming its pid."""
    with open(marker, "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(seconds)
    report_progress(1, 2, f"pid {os.getpid()}")
    return os.getpid()


TASKS = (
    Task(
        "mark_then_progress",
        mark_then_progress,
        "test: mark, work, report progress",
        (Param("marker", str, None, "file to append to"), Param("seconds", float, 0.0, "work", min=0, max=60)),
        timeout=120,
        retries=3,
        backoff=1.0,
    ),
)
