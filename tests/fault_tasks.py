"""Tasks that misbehave on purpose, for the fault matrix. Workers see them only when a test sets
WORKQUEUE_EXTRA_TASKS=tests.fault_tasks in their environment."""

from __future__ import annotations

import ctypes
import os
import signal
import time
from pathlib import Path

from task_def.registry import Param, Task


def raise_error(message: str = "boom") -> None:
    raise RuntimeError(message)


def raise_with_retries(message: str = "boom") -> None:
    raise RuntimeError(message)


def ignore_alarm(seconds: float = 30) -> str:
    """Ignores SIGALRM, as a C extension holding the GIL effectively does, and overruns."""
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    time.sleep(seconds)
    return "should have been killed"


def exit_process(code: int = 0) -> None:
    os._exit(code)


def segfault() -> None:
    ctypes.string_at(0)


def unserializable() -> object:
    return {"a set": {1, 2, 3}}


def count_runs(marker: str, seconds: float = 0.0) -> int:
    """Appends a line to ``marker`` per run, so a test can count how often each job ran."""
    with open(marker, "a") as f:
        f.write(f"{os.getpid()}\n")
    if seconds:
        time.sleep(seconds)
    return len(Path(marker).read_text().splitlines())


def count_runs_unsafe(marker: str, seconds: float = 0.0) -> int:
    return count_runs(marker, seconds)


def whoami() -> dict:
    """The process that ran it, and its parent: which work horse, for which worker."""
    return {"pid": os.getpid(), "ppid": os.getppid()}


_LEAKED: list[bytes] = []


def leak(megabytes: int = 50) -> dict:
    """Keeps ``megabytes`` more in memory for as long as its process lives, as a leaky task does."""
    _LEAKED.append(os.urandom(megabytes * 1_000_000))
    return whoami()


def _quick(name, func, params=(), timeout=30, **kw) -> Task:
    return Task(name, func, f"test: {name}", params, timeout=timeout, backoff=1.0, **kw)


TASKS = (
    _quick("raise_error", raise_error, (Param("message", str, "boom", "error text"),), retries=0),
    _quick("raise_with_retries", raise_with_retries, (Param("message", str, "boom", "error text"),), retries=2),
    _quick(
        "ignore_alarm", ignore_alarm, (Param("seconds", float, 30.0, "how long", min=0, max=300),), timeout=2, retries=0
    ),
    _quick("exit_process", exit_process, (Param("code", int, 0, "exit code", min=0, max=255),), retries=0),
    _quick("segfault", segfault, retries=0),
    _quick("unserializable", unserializable, retries=0),
    _quick(
        "count_runs",
        count_runs,
        (Param("marker", str, None, "file to append to"), Param("seconds", float, 0.0, "sleep", min=0, max=60)),
        retries=3,
    ),
    _quick(
        "count_runs_unsafe",
        count_runs_unsafe,
        (Param("marker", str, None, "file to append to"), Param("seconds", float, 0.0, "sleep", min=0, max=60)),
        rerun_safe=False,
        retries=0,
    ),
    _quick("whoami", whoami, retries=0),
    _quick("leak", leak, (Param("megabytes", int, 50, "how much to keep", min=1, max=500),), retries=0),
)


def chaos_mark(log: str, tag: int, seconds: float = 0.0) -> int:
    """Appends ``tag`` to the shared ``log`` (one small O_APPEND write: atomic), for the chaos test,
    after working ``seconds``."""
    time.sleep(seconds)
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{tag}\n".encode())
    finally:
        os.close(fd)
    return tag


TASKS += (
    _quick(
        "chaos_mark",
        chaos_mark,
        (
            Param("log", str, None, "shared log"),
            Param("tag", int, None, "job tag", min=0, max=10**6),
            Param("seconds", float, 0.0, "work time", min=0, max=10),
        ),
        retries=8,
    ),
)
