"""Detached background processes for `make run` and `make stop`: a pid file and a log each."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from workqueue.errors import WorkqueueError
from workqueue.settings import RUN_DIR_ENV

RUN_DIR = Path(os.environ.get(RUN_DIR_ENV, ".run"))


def pid_path(name: str) -> Path:
    return RUN_DIR / f"{name}.pid"


def log_path(name: str) -> Path:
    return RUN_DIR / f"{name}.log"


def running(name: str) -> int | None:
    """The pid of the service if it is alive."""
    try:
        pid = int(pid_path(name).read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def start(name: str, command: list[str], wait_url: str | None = None, timeout: float = 20.0) -> int:
    """Start ``command`` in its own session unless it runs already; its pid."""
    pid = running(name)
    if pid is None:
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        with open(log_path(name), "ab") as log:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        pid = process.pid
        pid_path(name).write_text(str(pid))
    deadline = time.monotonic() + timeout
    while wait_url and not _answers(wait_url):
        if running(name) is None or time.monotonic() > deadline:
            raise WorkqueueError(f"{name} did not come up at {wait_url}; see {log_path(name)}")
        time.sleep(0.1)
    return pid


def stop(name: str, timeout: float = 60.0) -> str:
    """SIGTERM (graceful), and a second SIGTERM (at once) if it is still running after ``timeout``."""
    pid = running(name)
    if pid is None:
        pid_path(name).unlink(missing_ok=True)
        return "not running"
    os.kill(pid, signal.SIGTERM)
    for attempt, limit in (("graceful", timeout), ("at once", 10.0)):
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if running(name) is None:
                pid_path(name).unlink(missing_ok=True)
                return f"stopped ({attempt})"
            time.sleep(0.1)
        if attempt == "graceful":
            os.kill(pid, signal.SIGTERM)
    raise WorkqueueError(f"{name} (pid {pid}) did not stop; kill it with: kill -9 {pid}")
