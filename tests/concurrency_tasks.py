"""Tasks for tests/test_concurrency.py (workers see them with WORKQUEUE_EXTRA_TASKS naming this module)."""

from __future__ import annotations

import time

from task_def.registry import Param, Task


def block(seconds: float = 60) -> str:
    """One blocking call: an exception raised in its thread waits for the call to return, as with a
    C extension stuck in a request; so it ignores its timeout."""
    time.sleep(seconds)
    return "should have been killed"


TASKS = (
    Task(
        "block", block, "test: one blocking call", (Param("seconds", float, 60.0, "how long", min=0, max=300),),
        timeout=2, retries=0,
    ),
)  # fmt: skip
