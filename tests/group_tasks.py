"""Tasks for tests/test_group_commit.py (workers see them with WORKQUEUE_EXTRA_TASKS naming this module)."""

from __future__ import annotations

import time

from task_def.registry import Param, Task


def nap_until(at: float) -> float:
    """Sleep until the wall-clock time ``at`` (at most a minute): jobs given the same ``at`` end
    together, whenever each started. Reports no progress (its only requests are its start and end)."""
    time.sleep(min(60.0, max(0.0, at - time.time())))
    return at


TASKS = (
    Task(
        "nap_until", nap_until, "test: sleep until a given time",
        (Param("at", float, None, "wall-clock time to end at (epoch seconds)", min=0),), timeout=120, retries=0,
    ),
)  # fmt: skip
