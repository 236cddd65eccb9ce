"""The worker: RQ's forking Worker, held to JSON and the catalogue, and stoppable from anywhere.

Beyond RQ's own behaviour:
- it heartbeats every few seconds and its registration expires soon after its last heartbeat, so
  a worker that was SIGKILLed or lost with its machine is noticed quickly (see ``recovery.sweep``);
- its work horse dies with it (PDEATHSIG), so a job never runs on behind a dead worker;
- a stop at once (``kill_workers --now``, or a second signal) hands the running job back instead
  of leaving it "started";
- a worker stopped on purpose exits with :data:`STOPPED_ON_PURPOSE`, so the pool does not replace it;
- progress reported by a task is stored on the running job.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import time
from typing import Any, Optional

from rq import Worker, get_current_job
from rq.command import parse_payload
from rq.scheduler import RQScheduler

from task_def import progress
from workqueue import recovery
from workqueue.policy import SERIALIZER, CatalogueJob
from workqueue.settings import HEARTBEAT_INTERVAL, HEARTBEAT_TTL

log = logging.getLogger(__name__)

#: Exit code of a worker process stopped on purpose (by a kill script), as opposed to one that died.
STOPPED_ON_PURPOSE = 3

#: The pub/sub command for a stop at once that hands the running job back (RQ's own: "shutdown").
SHUTDOWN_NOW = "shutdown-now"

#: Progress is written to Redis at most this often per job (and always at 100 %).
PROGRESS_INTERVAL = 0.5

_PR_SET_PDEATHSIG = 1
_stopped_on_purpose = False


def die_with_parent(sig: int) -> None:
    """Have the kernel send ``sig`` to this process when its parent dies (Linux; elsewhere a no-op)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)


def stopped_on_purpose() -> bool:
    """Whether this process's worker was stopped by a command, not by a crash or the pool."""
    return _stopped_on_purpose


class _Scheduler(RQScheduler):
    """RQ's scheduler process, which (unlike RQ's) stops when its worker dies."""

    def _install_signal_handlers(self) -> None:
        super()._install_signal_handlers()
        die_with_parent(signal.SIGTERM)


class CatalogueWorker(Worker):
    """RQ's forking worker, held to JSON and the catalogue whoever constructs it."""

    job_class = CatalogueJob

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["serializer"] = SERIALIZER
        kwargs["job_class"] = CatalogueJob
        kwargs.setdefault("worker_ttl", HEARTBEAT_TTL + HEARTBEAT_INTERVAL)  # RQ idles ttl - 15 s per poll
        kwargs.setdefault("job_monitoring_interval", HEARTBEAT_INTERVAL)
        super().__init__(*args, **kwargs)
        self._cold = False
        self._stop_reason = "the worker was stopped at once"

    def heartbeat(self, timeout: Optional[int] = None, pipeline: Any = None) -> None:
        """RQ's heartbeat, but the registration lapses HEARTBEAT_TTL seconds after the last one."""
        super().heartbeat(min(timeout or HEARTBEAT_TTL, HEARTBEAT_TTL), pipeline)

    def _start_scheduler(self, burst: bool = False, logging_level: Optional[str] = "INFO", *args: Any, **kwargs: Any) -> None:
        """RQ's, with a scheduler that dies with this worker instead of running on as an orphan."""
        level = logging_level if logging_level is not None else self.log.level
        self.scheduler = _Scheduler(self.queues, connection=self.connection, logging_level=level, serializer=self.serializer)
        self.scheduler.acquire_locks()
        if not self.scheduler.acquired_locks:
            return
        if not burst:
            self.scheduler.start()
            return
        try:
            self.scheduler.register_birth()
            self.scheduler.enqueue_scheduled_jobs()
        finally:
            self.scheduler.release_locks()
            self.scheduler.register_death()

    def setup_work_horse_signals(self) -> None:
        super().setup_work_horse_signals()
        die_with_parent(signal.SIGKILL)

    def handle_payload(self, message: dict) -> None:
        """RQ's pub/sub commands, plus ours; a shutdown marks the worker as stopped on purpose."""
        global _stopped_on_purpose
        payload = parse_payload(message)
        command = payload.get("command")
        if command not in ("shutdown", SHUTDOWN_NOW):
            return super().handle_payload(message)
        _stopped_on_purpose = True
        by = payload.get("by") or "a shutdown command"
        self._stop_reason = f"stopped by {by}"
        self._cold = command == SHUTDOWN_NOW
        self.log.warning("Worker %s: %s (%s)", self.name, self._stop_reason, "at once" if self._cold else "gracefully")
        os.kill(os.getpid(), signal.SIGTERM if self._cold else signal.SIGINT)

    def request_stop(self, signum: int, frame: Any) -> None:
        if self._cold:
            return self.request_force_stop(signum, frame)
        return super().request_stop(signum, frame)

    def request_force_stop(self, signum: int, frame: Any) -> None:
        """Cold shutdown, however soon after the first signal; the running job is handed back.

        RQ ignores a second signal within a second of the first, because under a terminal the
        pool and the worker both receive each Ctrl-C. Our pool runs each worker in its own process
        group and forwards each signal once, so a quick second Ctrl-C is meant.
        """
        self.log.warning("Worker %s: cold shut down", self.name)
        job = self.get_current_job() if self.horse_pid else None
        if self.horse_pid:
            self.kill_horse(signal.SIGKILL)
            self.wait_for_horse()
            self._horse_pid = 0
        if job is not None:
            reason = self._stop_reason if self._cold else "the consumer was stopped at once"
            recovery.hand_back(self.connection, job, reason, self.name)
        raise SystemExit()


class _ProgressStore:
    """Stores ``report_progress`` calls on the running job's meta, throttled."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def __call__(self, done: float, total: float, message: str) -> None:
        job = get_current_job()
        if job is None:
            return
        now = time.monotonic()
        finished = total > 0 and done >= total
        if not finished and now - self._last.get(job.id, 0.0) < PROGRESS_INTERVAL:
            return
        self._last = {job.id: now}
        percent = round(100.0 * done / total, 1) if total > 0 else None
        job.meta["progress"] = {"done": done, "total": total, "percent": percent, "message": message[:200]}
        try:
            job.save_meta()
        except Exception:  # progress is advisory: never fail a job for it
            log.warning("could not store progress of job %s", job.id, exc_info=True)


progress.set_sink(_ProgressStore())
