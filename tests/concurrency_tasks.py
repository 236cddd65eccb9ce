"""Tasks for tests/test_concurrency.py (workers see them with WORKQUEUE_EXTRA_TASKS naming this module)."""

from __future__ import annotations

import threading
import time

from task_def.registry import Param, Task


def block(seconds: float = 60) -> str:
    """One blocking call: an exception raised in its thread waits for the call to return, as with a
    C extension stuck in a request; so it ignores its timeout."""
    time.sleep(seconds)
    return "should have been killed"


def whose_thread(seconds: float = 0.2) -> dict:
    """How many jobs (this one included) the thread running it has run, and which threads its horse
    has meanwhile: a horse's slot threads are kept from job to job, and one thread keeps the timeouts."""
    thread = threading.current_thread()
    thread.jobs_run = getattr(thread, "jobs_run", 0) + 1  # type: ignore[attr-defined]
    time.sleep(seconds)
    return {"jobs_run": thread.jobs_run, "threads": sorted(t.name for t in threading.enumerate())}  # type: ignore[attr-defined]


def paced_twice(marker: str, host: str = "site.test") -> dict:
    """Two requests' worth of pacing (``limits.pace_current_job``, as the network layer calls it before
    each request): the first, then, once the job beside it has made its own first one, the second;
    how long each waited."""
    from pathlib import Path

    from workqueue import limits

    began = time.monotonic()
    limits.pace_current_job(host)
    first = time.monotonic() - began
    with open(marker, "a") as marks:
        marks.write("first\n")
    deadline = time.monotonic() + 20
    while Path(marker).read_text().count("first") < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    began = time.monotonic()
    limits.pace_current_job(host)
    return {"first": first, "second": time.monotonic() - began}


TASKS = (
    Task(
        "block", block, "test: one blocking call", (Param("seconds", float, 60.0, "how long", min=0, max=300),),
        timeout=2, retries=0,
    ),
    Task(
        "whose_thread", whose_thread, "test: the thread running it",
        (Param("seconds", float, 0.2, "how long", min=0, max=60),), timeout=30, retries=0,
    ),
    Task(
        "paced_twice", paced_twice, "test: paced before a first and a second request",
        (Param("marker", str, None, "a file the two jobs mark"), Param("host", str, "site.test", "the host")),
        timeout=60, retries=0,
    ),
)  # fmt: skip
