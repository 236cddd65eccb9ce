"""``async def`` tasks for tests/test_async_tasks.py (workers see them with WORKQUEUE_EXTRA_TASKS naming
this module)."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from typing import Any

from task_def import report_progress
from task_def.registry import Param, Task

#: The coroutines of ``together`` running at this moment in this process, and the most at once.
_together = {"now": 0, "most": 0}


async def together(count: int, seconds: float = 20.0) -> dict:
    """Wait until ``count`` jobs of this task run at once in this process (at most ``seconds``):
    the most seen at once, the thread running the coroutine and its loop (the same for all of a
    horse's), and whether the job is known inside (progress reported from the coroutine is stored)."""
    loop = asyncio.get_running_loop()
    _together["now"] += 1  # only the loop's thread touches the counts
    _together["most"] = max(_together["most"], _together["now"])
    try:
        deadline = loop.time() + seconds
        while _together["most"] < count and loop.time() < deadline:  # once all met, none waits for a late one
            await asyncio.sleep(0.02)
        report_progress(1, 1, "together")
        return {
            "most": _together["most"],
            "thread": threading.current_thread().name,
            "loop": id(loop),
            "horse": os.getpid(),
        }
    finally:
        _together["now"] -= 1


async def nap(seconds: float, marker: str = "-") -> dict:
    """Sleep ``seconds`` on the loop, reporting progress every 0.2 s. Writes to ``marker`` ("-": none)
    ``started <the horse's pid>``, and ``cancelled`` if a cancellation (the job's timeout or stop) ends it."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    if marker != "-":
        with open(marker, "a") as marks:
            marks.write(f"started {os.getpid()}\n")
    try:
        while (left := seconds - (loop.time() - began)) > 0:
            await asyncio.sleep(min(0.2, left))
            report_progress(min(seconds, loop.time() - began), seconds, "napping")
    except asyncio.CancelledError:
        if marker != "-":
            with open(marker, "a") as marks:
                marks.write("cancelled\n")
        raise
    return {"slept": seconds}


async def deaf(seconds: float) -> str:
    """Sleep ``seconds`` on the loop and ignore every cancellation meanwhile: a coroutine that ignores
    its timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        try:
            await asyncio.sleep(deadline - loop.time())
        except asyncio.CancelledError:
            continue
    return "should have been killed"


def wrapped(seconds: float) -> Coroutine[Any, Any, dict]:
    """A plain function that returns a coroutine (an async task under a plain decorator): run as one."""
    return nap(seconds)


async def fails(message: str) -> None:
    """Raise ValueError(message) from the coroutine."""
    await asyncio.sleep(0)
    raise ValueError(message)


TASKS = (
    Task(
        "together", together, "test: async, waits for its neighbours",
        (Param("count", int, None, "how many at once", min=1, max=50),
         Param("seconds", float, 20.0, "the longest wait", min=0, max=60)),
        timeout=60, retries=0,
    ),
    Task(
        "nap", nap, "test: async sleep",
        (Param("seconds", float, None, "how long", min=0, max=300),
         Param("marker", str, "-", "a file a cancellation is written to")),
        timeout=120, retries=0,
    ),
    Task(
        "deaf", deaf, "test: async, ignores cancellation",
        (Param("seconds", float, 60.0, "how long", min=0, max=300),), timeout=2, retries=0,
    ),
    Task(
        "wrapped", wrapped, "test: returns a coroutine",
        (Param("seconds", float, None, "how long", min=0, max=60),), timeout=30, retries=0,
    ),
    Task("fails", fails, "test: async, raises", (Param("message", str, None, "the error"),), timeout=30, retries=0),
)  # fmt: skip
