"""Sleeping: the stand-in for work that waits on I/O."""

from __future__ import annotations

import time

from task_def.progress import report_progress


def sleep(seconds: float) -> dict:
    """Sleep ``seconds``, reporting progress about once a second."""
    start = time.monotonic()
    deadline = start + seconds
    report_progress(0, seconds, "sleeping")
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(1.0, left))
        report_progress(min(seconds, time.monotonic() - start), seconds, "sleeping")
    return {"slept": round(time.monotonic() - start, 3)}
