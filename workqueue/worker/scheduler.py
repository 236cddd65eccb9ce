"""RQ's scheduler: the process beside a worker that moves due delayed jobs (and retries waiting
out their backoff) onto their queues. Ours dies with its worker, and waits out a Redis outage.

RQ's loop (``RQScheduler.work``) lets any Redis error end the process. The worker's maintenance
starts another only every few minutes, so until then, or until its lock lapses and the recovery
sweep takes its queues, delayed jobs wait. Here a refusal (OOM, MISCONF, READONLY...), or Redis
away for longer than the connection's retries, skips that step of the loop, which tries again at
its next turn (every second).
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from typing import Any

import redis
from rq.scheduler import RQScheduler

from workqueue import outage, rq_compat
from workqueue.worker.process import die_with_parent

log = logging.getLogger(__name__)


class Scheduler(RQScheduler):
    """RQ's scheduler process, which (unlike RQ's) stops when its worker dies and outlives an outage."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._worker_pid = os.getpid()  # built in the worker, which forks it
        self._failing = False

    def _install_signal_handlers(self) -> None:
        rq_compat.scheduler_signal_handlers(self)
        die_with_parent(signal.SIGTERM)
        if os.getppid() != self._worker_pid:  # its worker died before that was set: no signal will come
            self.request_stop()

    def request_stop(self, signum: Any = None, frame: Any = None) -> None:
        """RQ's, and Redis commands stop being retried soon (``outage.request_stop``): the loop
        checks the stop only between commands, which an outage would otherwise stretch to minutes."""
        outage.request_stop()
        super().request_stop(signum, frame)

    def register_birth(self) -> None:
        self._ride_out(super().register_birth, "register")

    def acquire_locks(self, auto_start: bool = False) -> Any:
        return self._ride_out(lambda: super(Scheduler, self).acquire_locks(auto_start), "take its locks")

    def heartbeat(self) -> None:
        self._ride_out(super().heartbeat, "heartbeat")

    def enqueue_scheduled_jobs(self) -> None:
        self._ride_out(super().enqueue_scheduled_jobs, "move due jobs")

    def stop(self) -> None:
        """RQ's: its locks released, its registration removed; if Redis cannot take that, both lapse."""
        self._ride_out(super().stop, "release its locks")

    def _ride_out(self, step: Callable[[], Any], what: str) -> Any:
        """``step()``'s answer; in the scheduler's own process, an outage it meets is logged (once)
        and skipped (None). In the worker (its start, a burst's one pass) the worker's own handling
        applies."""
        if os.getpid() == self._worker_pid:
            return step()
        try:
            answer = step()
        except redis.RedisError as exc:
            if not outage.is_outage(exc):
                raise
            if not self._failing:
                said = outage.describe(exc)
                log.warning("Scheduler [PID %d] could not %s: %s; trying again", os.getpid(), what, said)
            self._failing = True
            return None
        if self._failing:
            log.warning("Scheduler [PID %d]: Redis accepts work again", os.getpid())
        self._failing = False
        return answer
