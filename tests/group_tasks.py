"""Tasks for tests/test_group_commit.py and tests/test_progress_writes.py (workers see them with
WORKQUEUE_EXTRA_TASKS naming this module)."""

from __future__ import annotations

import time
from pathlib import Path

from task_def.progress import report_progress
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


def _wait_for_file(path: Path) -> None:
    deadline = time.monotonic() + 60
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def report_steps(folder: str) -> int:
    """Reports "one"; once ``folder``/go1 exists, "two" and "three" at once; returns once go2 exists."""
    report_progress(1, 4, "one")
    _wait_for_file(Path(folder) / "go1")
    report_progress(2, 4, "two")
    report_progress(3, 4, "three")
    _wait_for_file(Path(folder) / "go2")
    return 3


TASKS += (
    Task(
        "report_steps", report_steps, "test: report progress in steps",
        (Param("folder", str, None, "where go1 and go2 appear"),), timeout=120, retries=0,
    ),
)  # fmt: skip


def report_then_sleep(folder: str, seconds: float = 30.0) -> str:
    """Once ``folder``/go1 exists (the test has paused Redis's writes) and the progress interval has passed
    since it began (so the report is written, not held), reports (a write that waits while the pause
    lasts), then sleeps ``seconds``: a timeout that comes during the report must end the job, not the report."""
    began = time.monotonic()
    _wait_for_file(Path(folder) / "go1")
    time.sleep(max(0.0, began + 0.6 - time.monotonic()))
    report_progress(1, 2, "reported while Redis refused writes")
    time.sleep(seconds)
    return "should have timed out"


#: report_then_sleep's timeout (seconds).
REPORT_TIMEOUT = 3

TASKS += (
    Task(
        "report_then_sleep", report_then_sleep, "test: report progress, then sleep",
        (Param("folder", str, None, "where go1 appears"), Param("seconds", float, 30.0, "sleep", min=0, max=60)),
        timeout=REPORT_TIMEOUT, retries=0,
    ),
)  # fmt: skip
