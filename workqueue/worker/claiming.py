"""The part of the worker that takes jobs: each one claimed and started in one round trip
(``job_steps.claim``), an idle worker waiting in a BLMOVE, and a Redis outage waited out with
backoff while a stop is still honoured.

Claiming ahead: a worker running one job at a time whose last job was short (under AHEAD_SHORT
seconds) claims up to ``claim_ahead`` more with its next one (as many as AHEAD_BUDGET seconds hold
at that job's pace), in the same round trip, from a deep queue (``job_steps.claim_many``,
``ahead_depth``). Each is started as any claimed job (in the started registry with an execution of
its own), so a worker that dies hands them all back; the worker runs them one by one before it
claims again. It holds them for AHEAD_HOLD seconds of its current job at most, and gives back
those it has not run when it stops, at the front of their queue, as they were
(``recovery.give_back``): other workers are never kept waiting behind a long job. A stop-job
command for one it holds stops it before it runs."""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from typing import Any

import redis
from rq import Queue
from rq.exceptions import DequeueTimeout, StopRequested
from rq.executions import Execution
from rq.job import Job
from rq.utils import now
from rq.worker import WorkerStatus

from workqueue import limits, outage, pausing, recovery, rq_compat
from workqueue.settings import (
    AHEAD_BUDGET,
    AHEAD_HOLD_DEFAULT,
    AHEAD_HOLD_ENV,
    AHEAD_MIN_DEPTH,
    AHEAD_SHORT,
    CLAIM_AHEAD_DEFAULT,
    CLAIM_AHEAD_ENV,
    IDLE_LOOK_GAP,
    IDLE_LOOK_GAP_ENV,
    IDLE_LOOK_GAP_RANGE,
    LIMIT_POLL,
    OUTAGE_MAX_BACKOFF,
)
from workqueue.worker import claim_request, job_steps
from workqueue.worker.held_ends import HeldEnds, end_hold_setting
from workqueue.worker.horse import Horse
from workqueue.worker.horse_side import HorseSideWorker
from workqueue.worker.idle_bell import IdleBell
from workqueue.worker.process import pool_gone

log = logging.getLogger(__name__)


#: The most jobs ``WORKQUEUE_CLAIM_AHEAD`` may ask a worker to claim ahead.
MAX_CLAIM_AHEAD = 50


def claim_ahead_settings(environ: dict[str, str] | os._Environ[str] = os.environ) -> tuple[int, float]:
    """``WORKQUEUE_CLAIM_AHEAD`` (jobs, 0 to MAX_CLAIM_AHEAD) and ``WORKQUEUE_CLAIM_AHEAD_HOLD``
    (seconds, above 0) from ``environ``, or their defaults; ValueError saying which is wrong."""
    raw_count, raw_hold = environ.get(CLAIM_AHEAD_ENV, ""), environ.get(AHEAD_HOLD_ENV, "")
    try:
        count = int(raw_count) if raw_count.strip() else CLAIM_AHEAD_DEFAULT
    except ValueError:
        count = -1
    if not 0 <= count <= MAX_CLAIM_AHEAD:
        raise ValueError(f"{CLAIM_AHEAD_ENV}={raw_count!r}: expected a whole number from 0 to {MAX_CLAIM_AHEAD}")
    try:
        hold = float(raw_hold) if raw_hold.strip() else AHEAD_HOLD_DEFAULT
    except ValueError:
        hold = -1.0
    if not 0 < hold < float("inf"):
        raise ValueError(f"{AHEAD_HOLD_ENV}={raw_hold!r}: expected seconds above 0, e.g. 0.5")
    return count, hold


def idle_look_gap_setting(environ: dict[str, str] | os._Environ[str] = os.environ) -> float:
    """``WORKQUEUE_IDLE_LOOK_GAP`` (seconds between an idle worker's looks at all its queues) from
    ``environ``, or IDLE_LOOK_GAP; ValueError saying what is wrong."""
    raw = environ.get(IDLE_LOOK_GAP_ENV, "")
    low, high = IDLE_LOOK_GAP_RANGE
    try:
        gap = float(raw) if raw.strip() else IDLE_LOOK_GAP
    except ValueError:
        gap = -1.0
    if not low <= gap <= high:
        raise ValueError(f"{IDLE_LOOK_GAP_ENV}={raw!r}: expected seconds from {low:g} to {high:g}, e.g. 2")
    return gap


class ClaimingWorker(HorseSideWorker):
    """RQ's Worker, taking its jobs as workqueue does (see the module)."""

    _horse: Horse | None
    _outage_noted: str
    #: Jobs claimed ahead and not yet run, in order; a lock, as stop-job commands look at them
    #: from RQ's command thread (which marks them in ``_stop_ahead``: the worker's thread records them),
    #: reentrant, as a cold stop's signal handler gives them back from the worker's thread.
    _ahead: deque[job_steps._Claimed]
    _ahead_lock: threading.RLock
    _stop_ahead: set[str]
    #: Seconds the last job took in the horse (None: none yet), and the claim-ahead settings.
    _last_run: float | None
    claim_ahead: int
    ahead_hold: float
    #: Seconds between an idle worker's looks at all its queues (``idle_look_gap_setting``).
    idle_look_gap: float
    _looked_at: float
    #: The job ends its horse handed over, not yet written (``held_ends``).
    held_ends: HeldEnds

    def _setup_claiming(self) -> None:
        """The claiming state of a new worker (its settings from the environment: see the module)."""
        self._outage_noted = ""
        self._ahead, self._ahead_lock, self._stop_ahead = deque(), threading.RLock(), set()
        self._last_run = None
        self.claim_ahead, self.ahead_hold = claim_ahead_settings()
        self.end_hold = end_hold_setting()
        self.idle_look_gap = idle_look_gap_setting()
        self._looked_at = 0.0  # when its last claim looked at every queue and found nothing (monotonic)
        self.held_ends = HeldEnds(self.end_hold)
        self._resumed = threading.Event()
        self.idle_bell = IdleBell(self.connection)

    def subscribe(self) -> None:
        """RQ's (its channel of commands, listened to in a thread), plus ``pausing.WAKE_CHANNEL``: a
        queue resumed wakes the worker if it sleeps because all its queues were paused, and ends its
        wait on another queue as its idle bell does (the resumed queue's jobs rang no bell)."""
        self.log.info("Worker %s: subscribing to channel %s", self.name, self.pubsub_channel_name)
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload, pausing.WAKE_CHANNEL: self._on_resume})
        self.pubsub_thread = self.pubsub.run_in_thread(  # type: ignore[assignment]  # RQ annotates it None
            sleep_time=60, daemon=True, exception_handler=self._pubsub_exception_handler
        )

    def _on_resume(self, _message: Any) -> None:
        self._resumed.set()
        self.idle_bell.rung()

    def write_held_ends(self) -> bool:
        """Write the ends the horse handed over (``held_ends``); whether none is held any more
        (False: Redis refuses them for now; they stay held, for the next try)."""
        return self.held_ends.write(self.connection, self.name)

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None):
        """RQ's, with every job taken and started in one round trip (``job_steps.claim``): at once
        when one is waiting; otherwise the worker goes idle and waits as RQ's does (a BLMOVE, or
        for several queues a short BLMOVE on the first and a look at all), then claims the job
        the BLMOVE moved. Redis being away is waited out as RQ does."""
        try:
            # As RQ's, a heartbeat first (at most one a second, see heartbeat): a new worker's
            # hash lives worker_ttl + 60 s until then, and a job it died with would wait as long.
            # Once it has run a job, it heartbeats as it hands each job to its horse instead
            # (``_run_in_horse``): off the way from one job's end to the next one's start.
            if self._last_run is None:
                self.heartbeat()
            claimed = self._next_ahead() or self._claim()
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

    def _claim(self, moved_from: Queue | None = None, wait: float | None = None, look: bool = True):
        """``job_steps.claim`` on the worker's queues: the job, started, and its queue; or None.
        ``wait``: first wait up to that many seconds for a job of ``moved_from`` (default: the
        first queue), in the same request (``job_steps.claim_many``); then, without ``look``, take
        only the job the wait brought, if any (a look at every queue is not due yet)."""
        # the ends held so far go first in the claim's request: one request for the ends of several jobs and the next
        before = self.held_ends.request(self.connection, self.name)
        queues = rq_compat.ordered_queues(self)
        if wait is not None and moved_from is not None and moved_from is not queues[0]:
            # Only paused queues come before it (see _wait_and_claim): the claim skips them anyway.
            queues = [moved_from] + [q for q in queues if q is not moved_from]
        ahead = self._ahead_wanted()
        if wait is None:
            return self._claim_from(queues, ahead, before, None, True)
        with self.idle_bell.armed() as rung:  # a wake ends the wait (``idle_bell``)
            if rung:  # a job its wait would not see was pushed since its last look: look now
                wait, look = None, True
            return self._claim_from(queues, ahead, before, wait, look)

    def _claim_from(self, queues: list[Queue], ahead: int, before: Any, wait: float | None, look: bool):
        """``_claim``'s claim on ``queues`` in their order."""
        try:
            while True:
                try:
                    found = job_steps.claim_many(
                        self,
                        queues,
                        1 + ahead,
                        ahead_depth=AHEAD_MIN_DEPTH if ahead else 0,
                        before=before,
                        wait=wait,
                        moved_only=not look,
                    )
                except claim_request.ClaimCut as cut:  # a stop while it waited: what the claim started goes back
                    before = None  # answered
                    if cut.found:
                        count = len(cut.found)
                        self.log.info("Worker %s: giving back %d job(s) claimed as it stopped", self.name, count)
                    self._give_back(cut.found, "the worker stops")
                    raise cut.cause from None
                except job_steps.LateClaim as late:
                    self._give_back_late(late)
                    return None
                wait = before = None
                look = True  # asking again (``retry``) looks at every queue
                if not found or not found[0].retry:
                    break
        finally:
            if before is not None:  # the claim failed before its reply: held still, unless it was answered
                self.held_ends.not_sent()
        if not found or found[0].job is None or found[0].queue is None:
            if look:
                self._looked_at = time.monotonic()
            if rq_compat.stop_requested(self):  # asked while the claim made the worker look busy: stop now
                raise StopRequested()
            return None
        if len(found) > 1:
            with self._ahead_lock:
                self._ahead.extend(found[1:])
        return self._taken(found[0])

    def _ahead_wanted(self) -> int:
        """How many jobs to claim ahead with the next one (see the module): as many as AHEAD_BUDGET
        seconds hold at the last job's pace (at least 5, as the last took under AHEAD_SHORT), at most
        ``claim_ahead``; none with several at once (``--concurrency``), before a first short job, or
        once stopping."""
        last = self._last_run
        if self.concurrency > 1 or not self.claim_ahead or last is None or last >= AHEAD_SHORT:
            return 0
        if rq_compat.stop_requested(self):
            return 0
        return min(self.claim_ahead, math.floor(AHEAD_BUDGET / max(last, 1e-6)))

    def _next_ahead(self) -> tuple[Job, Queue] | None:
        """The next job claimed ahead, taken as a claimed job is (None: none held); one a stop-job
        command asked to stop is recorded as stopped instead of run."""
        while True:
            with self._ahead_lock:
                if not self._ahead:
                    return None
                claimed = self._ahead.popleft()
                stopped = claimed.job is not None and claimed.job.id in self._stop_ahead
            if stopped:
                self._record_stopped_ahead(claimed)
                continue
            assert claimed.job is not None
            claimed.job.started_at = now()  # when it starts, not when it was claimed (its end writes this)
            return self._taken(claimed)

    def _stop_if_ahead(self, job_id: str) -> bool:
        """From RQ's command thread: a stop-job command for a job this worker holds ahead is noted,
        to be recorded by the worker's thread before it would run (:meth:`settle_ahead`). Whether it holds it."""
        with self._ahead_lock:
            if not self._holds_ahead(job_id):
                return False
            self._stop_ahead.add(job_id)
        self.log.warning("Worker %s: job %s, claimed ahead, is stopped before it runs", self.name, job_id)
        return True

    def _holds_ahead(self, job_id: str) -> bool:
        """Whether ``job_id`` is one of the jobs this worker holds ahead, not yet run."""
        with self._ahead_lock:
            return any(claimed.job is not None and claimed.job.id == job_id for claimed in self._ahead)

    def settle_ahead(self, give_back: bool, why: str) -> None:
        """Record the stops asked for jobs held ahead and, with ``give_back``, put back the others
        at the front of their queues, as they were (``recovery.give_back``). In the worker's thread.
        Redis being away leaves them started: the sweep hands them back once the worker is gone."""
        with self._ahead_lock:
            stopped = [c for c in self._ahead if c.job is not None and c.job.id in self._stop_ahead]
            held = [c for c in self._ahead if c not in stopped] if give_back else []
            self._ahead = deque(c for c in self._ahead if c not in stopped and c not in held)
        for claimed in stopped:
            self._record_stopped_ahead(claimed)
        if held:
            self.log.info("Worker %s: giving back %d job(s) claimed ahead (%s)", self.name, len(held), why)
        self._give_back(held, why)

    def _give_back(self, held: list[job_steps._Claimed], why: str) -> None:
        """Put jobs claimed and never run back at the front of their queues, as they were
        (``recovery.give_back``), in their order."""
        for claimed in reversed(held):  # each to the front: their order is kept
            assert claimed.job is not None and claimed.queue is not None
            try:
                if claimed.execution is None:  # left unstarted by the claim: in the intermediate list
                    recovery.requeue_unstarted(self.connection, claimed.job.id, claimed.queue)
                else:
                    self.executions.pop(claimed.execution.id, None)
                    recovery.give_back(self.connection, claimed.job, claimed.queue, claimed.execution.id, self.name)
            except redis.RedisError as exc:
                if not outage.is_outage(exc):
                    raise
                self.log.warning(
                    "Worker %s: %s, so job %s stays started; the sweep hands it back once the worker is gone",
                    self.name,
                    outage.describe(exc),
                    claimed.job.id,
                )

    def _record_stopped_ahead(self, claimed: job_steps._Claimed) -> None:
        """Record a job held ahead as stopped by a stop-job command (RQ's record of a stopped job)."""
        job, queue = claimed.job, claimed.queue
        assert job is not None and queue is not None
        with self._ahead_lock:
            self._stop_ahead.discard(job.id)
        execution = claimed.execution or job_steps.start(self, job, queue, heartbeat=False)
        self.executions.pop(execution.id, None)
        job.ended_at = now()
        rq_compat.set_stopped_job(self, job.id)  # RQ's mark: the failure handler records it as stopped
        rq_compat.handle_stopped_job(self, job, queue, execution)

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

    def _give_back_late(self, late: job_steps.LateClaim) -> None:
        """Give back the jobs of a claim answered too late (``job_steps.LateClaim``): the sweep may
        have handed them to another worker meanwhile (then the guard leaves them to it)."""
        self.log.warning("Worker %s: %s; giving back its %d job(s) unrun", self.name, late, len(late.found))
        self._give_back(late.found, "its claim was answered late")

    def _claim_more(self, count: int) -> list[tuple[Job, Queue]]:
        """Up to ``count`` more jobs, claimed and started in one round trip without waiting: a
        worker running several jobs at once (``--concurrency``) filling its free slots."""
        queues = rq_compat.ordered_queues(self)
        while True:
            try:
                claimed = job_steps.claim_many(self, queues, count)
            except job_steps.LateClaim as late:
                self._give_back_late(late)
                return []
            if not claimed or not claimed[0].retry:
                return [self._taken(one) for one in claimed]

    def _wait_and_claim(self, timeout: int | None):
        """Claim a job, waiting up to ``timeout`` seconds for one (None: not at all) in a BLMOVE on
        the first queue not paused, which moves the job into its intermediate list: an atomic
        hand-over (RQ's BLPOP on several queues can lose a job, rq#2236). A job of another queue or
        of a level other than normal, which no BLMOVE sees, rings the worker's idle bell
        (``workqueue.bells``), which ends the wait at once. The wait is cut into slices of
        ``idle_look_gap``; a look at every queue follows the slice that ends once the last one is
        that old (the wait's own claim, in its request), for what rings no bell; the others' claims
        take only the job their BLMOVE brought. With every queue paused it sleeps until a resume."""
        deadline = None if timeout is None else time.monotonic() + timeout
        # the last look at every queue is recent and found nothing: the wait starts with no look of its own
        looked = self._look_recent(0.0)
        while True:
            if rq_compat.stop_requested(self):  # noted, not raised (the worker looked busy then): stop now
                raise StopRequested()
            claimed = self._next_ahead() or (None if looked else self._claim())
            if claimed is not None:
                return claimed
            looked = False
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
            slice_ = min(self.idle_look_gap, left)
            due = self._limits_due()
            if due is not None:  # jobs held by a limit: wake when one may be released, claim to release it
                slice_ = max(0.05, min(slice_, due, LIMIT_POLL))
            look = due is not None or not self._look_recent(slice_)
            self._resumed.clear()  # before the look: a resume after it wakes the sleep below
            paused = pausing.paused_names(self.connection)
            open_ = [q for q in queues if q.name not in paused]
            if not open_:
                self._resumed.wait(slice_)
                continue
            claimed = self._claim(open_[0], wait=slice_, look=look)
            if claimed is not None:
                return claimed
            looked = True

    def _look_recent(self, after: float) -> bool:
        """Whether ``after`` seconds from now the worker's last look at every queue will still be
        under ``idle_look_gap`` old, and it is still noted idle since (``idle_bell``: a wake for
        whatever that look could not see)."""
        return self.idle_bell.noted and time.monotonic() + after < self._looked_at + self.idle_look_gap

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
