"""Helper threads that a server runs beside its HTTP handling (the gateway's callback delivery),
watched: one that dies is logged with its exception, shown as down in a status, and restarted
(after a pause that doubles while it keeps dying), so a bug in a helper never silently ends
its work while HTTP still answers."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from workqueue.settings import HELPER_FIRST_PAUSE, HELPER_MAX_PAUSE, HELPER_STEADY

log = logging.getLogger(__name__)


class Helper:
    """One named loop, ``target(stop)``, that should run until ``stop`` is set."""

    def __init__(self, name: str, target: Callable[[threading.Event], Any]) -> None:
        self.name = name
        self.target = target
        self.thread: threading.Thread | None = None
        self.restarts = 0
        self.last_error: str | None = None
        self.pause = HELPER_FIRST_PAUSE
        self.restart_at = 0.0

    @property
    def up(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def start(self, stop: threading.Event) -> None:
        self.thread = threading.Thread(target=self._run, args=(stop,), name=f"workqueue-{self.name}", daemon=True)
        self.thread.start()

    def _run(self, stop: threading.Event) -> None:
        started = time.monotonic()
        try:
            self.target(stop)
            if stop.is_set():
                return
            self.last_error = "returned while the server runs"
            log.error("helper thread %s returned while the server runs; restarting it", self.name)
        except BaseException as exc:  # whatever ends the loop, it is reported and restarted
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("helper thread %s died (%s); restarting it", self.name, self.last_error)
        if time.monotonic() - started >= HELPER_STEADY:
            self.pause = HELPER_FIRST_PAUSE
        self.restart_at = time.monotonic() + self.pause
        self.pause = min(HELPER_MAX_PAUSE, self.pause * 2)

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "up": self.up, "restarts": self.restarts, "last_error": self.last_error}


class Supervisor:
    """Starts each helper and a watcher thread that restarts any that has died."""

    def __init__(self, check_every: float = 0.5) -> None:
        self.helpers: list[Helper] = []
        self.check_every = check_every

    def add(self, name: str, target: Callable[[threading.Event], Any]) -> None:
        self.helpers.append(Helper(name, target))

    def start(self, stop: threading.Event) -> threading.Thread:
        """Start every helper, and the watcher (returned); all of them end once ``stop`` is set."""
        for helper in self.helpers:
            helper.start(stop)
        watcher = threading.Thread(target=self._watch, args=(stop,), name="workqueue-supervisor", daemon=True)
        watcher.start()
        return watcher

    def _watch(self, stop: threading.Event) -> None:
        while not stop.wait(self.check_every):
            for helper in self.helpers:
                if not helper.up and time.monotonic() >= helper.restart_at:
                    helper.restarts += 1
                    log.warning("restarting helper thread %s (restart %d)", helper.name, helper.restarts)
                    helper.start(stop)

    def status(self) -> list[dict[str, Any]]:
        """Each helper: its name, whether it runs, how often it was restarted, why it last died."""
        return [helper.status() for helper in self.helpers]
