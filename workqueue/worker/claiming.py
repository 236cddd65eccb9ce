"""The part of the worker that takes jobs: each one claimed and started in one round trip
(``job_steps.claim``), an idle worker waiting in a BLMOVE, and a Redis outage waited out with
backoff while a stop is still honoured."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import redis
from rq import Queue
from rq.exceptions import DequeueTimeout, StopRequested
from rq.executions import Execution
from rq.job import Job
from rq.worker import WorkerStatus

from workqueue import limits, outage, pausing, rq_compat
from workqueue.replies import as_bytes
from workqueue.settings import (
    IDLE_LOOK_GAP,
    LIMIT_POLL,
    MULTI_QUEUE_POLL,
    OUTAGE_MAX_BACKOFF,
)
from workqueue.worker import job_steps
from workqueue.worker.horse import Horse
from workqueue.worker.horse_side import HorseSideWorker
from workqueue.worker.process import pool_gone

log = logging.getLogger(__name__)


class ClaimingWorker(HorseSideWorker):
    """RQ's Worker, taking its jobs as workqueue does (see the module)."""

    _horse: Horse | None
    _outage_noted: str

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None):
        """RQ's, with every job taken and started in one round trip (``job_steps.claim``): at once
        when one is waiting; otherwise the worker goes idle and waits as RQ's does (a BLMOVE, or
        for several queues a short BLMOVE on the first and a look at all), then claims the job
        the BLMOVE moved. Redis being away is waited out as RQ does."""
        try:
            # As RQ's, a heartbeat first (at most one a second, see heartbeat): a new worker's
            # hash lives worker_ttl + 60 s until then, and a job it died with would wait as long.
            self.heartbeat()
            claimed = self._claim()
            if claimed is not None:
                self._outage_over()
                return claimed
        except redis.RedisError as exc:
            if not outage.is_outage(exc):
                raise
            # waited out below
        if self._horse is None:  # fork it now, not when the next job is already waiting
            self._horse = Horse(self._serve_as_horse)
        self.set_state(WorkerStatus.IDLE)
        self.procline("Listening on " + ",".join(self.queue_names()))
        backoff, idle_since = 1.0, time.monotonic()
        while True:
            if pool_gone():
                self.log.warning("Worker %s: its pool is gone; stopping", self.name)
                raise StopRequested()
            try:
                self.heartbeat()
                if self.should_run_maintenance_tasks:
                    self.run_maintenance_tasks()
                wait = timeout
                if timeout is not None and max_idle_time is not None:
                    wait = max(1, min(timeout, math.ceil(max_idle_time - (time.monotonic() - idle_since))))
                claimed = self._wait_and_claim(wait)
                self._outage_over()
                return claimed
            except DequeueTimeout:
                self._outage_over()
                if max_idle_time is not None and time.monotonic() - idle_since >= max_idle_time:
                    return None
            except redis.RedisError as exc:
                if not outage.is_outage(exc):
                    raise
                self._note_outage(exc, backoff)
                if outage.pause(backoff):  # stopping, or abandoned by its pool
                    raise StopRequested() from None
                backoff = min(backoff * self.exponential_backoff_factor, OUTAGE_MAX_BACKOFF)

    def _note_outage(self, exc: redis.RedisError, backoff: float) -> None:
        """Log an outage once when it starts (or changes), not at every retry."""
        what = outage.describe(exc)
        if what != self._outage_noted:
            self._outage_noted = what
            self.log.warning(
                "Worker %s: %s; waiting for it (retrying with backoff, now %.0f s)", self.name, what, backoff
            )

    def _outage_over(self) -> None:
        if self._outage_noted:
            self.log.warning("Worker %s: Redis accepts work again", self.name)
            self._outage_noted = ""

    def _claim(self, moved: bytes | None = None, moved_from: Queue | None = None):
        """``job_steps.claim`` on the worker's queues: the job, started, and its queue; or None.
        ``moved``: a job the worker's BLMOVE took from ``moved_from`` (default: its first queue)."""
        queues = rq_compat.ordered_queues(self)
        if moved is not None and moved_from is not None and moved_from is not queues[0]:
            # Only paused queues come before it (see _wait_and_claim): the claim skips them anyway.
            queues = [moved_from] + [q for q in queues if q is not moved_from]
        while True:
            claimed = job_steps.claim(self, queues, moved)
            moved = None
            if not claimed.retry:
                break
        if claimed.job is None or claimed.queue is None:
            if rq_compat.stop_requested(self):  # asked while the claim made the worker look busy: stop now
                raise StopRequested()
            return None
        return self._taken(claimed)

    def _taken(self, claimed: job_steps._Claimed) -> tuple[Job, Queue]:
        """A job just claimed, as RQ's dequeue leaves it (and logs it)."""
        assert claimed.job is not None and claimed.queue is not None
        self.reorder_queues(reference_queue=claimed.queue)
        claimed.job.redis_server_version = self.get_redis_server_version()
        claimed.job.started_execution = claimed.execution  # type: ignore[attr-defined]
        if self.log_job_description:
            self.log.info(
                "Worker %s: %s: %s (%s)", self.name, claimed.queue.name, claimed.job.description, claimed.job.id
            )
        else:
            self.log.info("Worker %s: %s: %s", self.name, claimed.queue.name, claimed.job.id)
        return claimed.job, claimed.queue

    def _claim_more(self, count: int) -> list[tuple[Job, Queue]]:
        """Up to ``count`` more jobs, claimed and started in one round trip without waiting: a
        worker running several jobs at once (``--concurrency``) filling its free slots."""
        queues = rq_compat.ordered_queues(self)
        while True:
            claimed = job_steps.claim_many(self, queues, count)
            if not claimed or not claimed[0].retry:
                return [self._taken(one) for one in claimed]

    def _wait_and_claim(self, timeout: int | None):
        """Claim a job, waiting up to ``timeout`` seconds for one (None: not at all) in a BLMOVE on
        the first queue not paused, which moves the job into its intermediate list: an atomic
        hand-over (RQ's BLPOP on several queues can lose a job, rq#2236). The wait is cut into
        slices (MULTI_QUEUE_POLL with several queues, else IDLE_LOOK_GAP), each followed by a look
        at every queue: a job of another queue, of a level other than normal (which no BLMOVE
        sees) or of a queue just resumed is taken this soon. With every queue paused it sleeps."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            claimed = self._claim()
            if claimed is not None:
                return claimed
            if deadline is None:  # a burst: done once no job waits, held by a limit or not
                due = self._limits_due()
                if due is None or rq_compat.stop_requested(self):
                    return None
                time.sleep(max(0.05, min(due, LIMIT_POLL)))
                raise DequeueTimeout(timeout, self.queue_keys())  # back to the idle loop: its heartbeat
            left = deadline - time.monotonic()
            if left <= 0:
                raise DequeueTimeout(timeout, self.queue_keys())
            queues = rq_compat.ordered_queues(self)
            slice_ = min(MULTI_QUEUE_POLL if len(queues) > 1 else IDLE_LOOK_GAP, left)
            due = self._limits_due()
            if due is not None:  # jobs held by a limit: wake when one may be released, claim to release it
                slice_ = max(0.05, min(slice_, due, LIMIT_POLL))
            paused = pausing.paused_names(self.connection)
            open_ = [q for q in queues if q.name not in paused]
            if not open_:
                time.sleep(slice_)
                continue
            first = open_[0]
            # redis-py annotates BLMOVE's timeout as int; Redis takes seconds with decimals (6.0+).
            moved = self.connection.blmove(first.key, first.intermediate_queue_key, slice_)  # type: ignore[arg-type]
            if moved is not None:
                claimed = self._claim(as_bytes(moved), first)
                if claimed is not None:
                    return claimed

    def _limits_due(self) -> float | None:
        """Seconds until a job held by a per-key limit on the worker's queues may be released
        (``limits.next_due``); None when none is held."""
        return limits.next_due(self.connection, [queue.key for queue in rq_compat.ordered_queues(self)], time.time())

    def cleanup_execution(self, job: Job, pipeline: Any, execution: Execution | None = None) -> None:
        """RQ's, plus the end of the run's concurrency lease for a job with a limit key, in the
        same transaction as the rest of the job's end (``limits.queue_release``)."""
        super().cleanup_execution(job, pipeline, execution)
        run = execution or getattr(self, "execution", None)
        key = limits.job_key(job)
        if run is not None and key:
            limits.queue_release(pipeline, job.key, job.id, run.id, key, f"rq:queue:{job.origin}")
