"""The worker: RQ's forking Worker, held to JSON and the catalogue, and stoppable from anywhere.

Beyond RQ's own behaviour:
- it heartbeats every few seconds and its registration expires soon after its last heartbeat, so
  a worker that was SIGKILLed or lost with its machine is noticed quickly (``heartbeats``);
- its work horse dies with it (PDEATHSIG), so a job never runs on behind a dead worker;
- a stop at once (``kill_workers --now``, or a second signal) hands the running job back instead
  of leaving it "started";
- a worker stopped on purpose exits with :data:`STOPPED_ON_PURPOSE`, so the pool does not replace it;
- progress reported by a task is stored on the running job;
- with ``--concurrency N`` its horse runs up to N jobs at once, in threads (:meth:`_run_concurrently`),
  each keeping its timeout, its stop, its progress and its hand-back;
- a Redis outage (not answering, or refusing writes: OOM, MISCONF, READONLY, LOADING) is waited out
  with backoff, never a reason to quit; a stop signal is still honoured within seconds during one,
  and a worker whose pool is gone (PDEATHSIG, or its parent changed) stops.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

import redis
from rq import Queue
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.suspension import is_suspended
from rq.utils import now
from rq.worker import RandomWorker, RoundRobinWorker

from task_def import crawl as task_crawl
from task_def import progress as task_progress
from workqueue import bells, crawling, limits, network, outage, rq_compat, tallies
from workqueue.connection import without_retries
from workqueue.jobs import SERIALIZER, CatalogueJob
from workqueue.settings import (
    AHEAD_LOOK,
    HARD_KILL_GRACE,
    HEARTBEAT_INTERVAL,
    HEARTBEAT_MIN_GAP,
    HEARTBEAT_TTL,
    MAX_HELD_ENDS,
    OUTAGE_MAX_BACKOFF,
    SUSPENSION_CHECK_GAP,
)
from workqueue.worker import job_steps, progress
from workqueue.worker.heartbeats import HeartbeatingWorker
from workqueue.worker.horse import WAITING, Horse
from workqueue.worker.process import (
    die_with_parent,
    pool_gone,
)
from workqueue.worker.scheduler import Scheduler
from workqueue.worker.slots import RunningJob

log = logging.getLogger(__name__)


#: ``consumer_main.py --concurrency``: the most jobs a worker's horse may run at once.
MAX_CONCURRENCY = 50


def use_concurrency(count: int) -> None:
    """Workers made in this process run up to ``count`` jobs at once (set in a pool's worker process
    before RQ builds its worker, which takes no such argument)."""
    if not 1 <= count <= MAX_CONCURRENCY:
        raise ValueError(f"concurrency {count}: expected 1 to {MAX_CONCURRENCY}")
    CatalogueWorker.concurrency = count


class CatalogueWorker(HeartbeatingWorker):
    """RQ's forking worker, held to JSON and the catalogue whoever constructs it."""

    job_class = CatalogueJob

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["serializer"] = SERIALIZER
        kwargs["job_class"] = CatalogueJob
        kwargs.setdefault("worker_ttl", HEARTBEAT_INTERVAL + 15)  # RQ blocks worker_ttl - 15 s per idle poll
        kwargs.setdefault("job_monitoring_interval", HEARTBEAT_INTERVAL)
        super().__init__(*args, **kwargs)
        self._cold = False
        self._forcing_stop = False
        self._first_term_at = None
        self._stop_reason = "the worker was stopped at once"
        self._hard_killed: str | None = None
        self._registered_at = 0.0
        self._superseded_run: str | None = None
        self._handed_back_at: float | None = None
        self._beaten_at = 0.0
        self._skip_beat = False
        self._seen_suspended = False
        self._suspension_checked_at = -SUSPENSION_CHECK_GAP
        self._horse: Horse | None = None
        self._worker_pid = os.getpid()
        self._setup_claiming()
        self._running: dict[str, RunningJob] = {}  # --concurrency: the jobs the horse runs, by id
        self._retire_when_drained = False
        self._jobs_beaten_at = 0.0

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        """RQ's, then the connection and scripts of a job's two requests, so the first job waits for neither.
        A worker started while Redis refuses writes (or is away) waits to register, with backoff.
        Here, not at import, what the worker installs: RQ's serializer lookup kept (``rq_compat.install``)
        and the progress store behind ``report_progress`` and the crawl's host, which the horse inherits."""
        rq_compat.install()
        task_progress.set_sink(progress.store)
        task_crawl.set_host(crawling.RedisCrawlHost())
        network.set_pacer(limits.pace_current_job)  # per-key limits: a job's first request on the wire
        backoff = 1.0
        while True:
            try:
                outage.probe_writes(self.connection)
                self._outage_over()
                break
            except redis.RedisError as exc:
                if not outage.is_outage(exc):
                    raise
                self._note_outage(exc, backoff)
                if outage.pause(backoff) or pool_gone():
                    raise SystemExit(1) from None
                backoff = min(backoff * 2, OUTAGE_MAX_BACKOFF)
        super().bootstrap(*args, **kwargs)
        job_steps.prepare(self.connection, groups=self.concurrency == 1 and self.end_hold > 0)

    def check_for_suspension(self, burst: bool) -> None:
        """RQ's, asked at most every SUSPENSION_CHECK_GAP seconds instead of before every job; a look
        while the horse ran the last job (:meth:`_look_for_suspension`) counts as one."""
        if time.monotonic() - self._suspension_checked_at < SUSPENSION_CHECK_GAP and not self._seen_suspended:
            return
        self._seen_suspended = False
        try:
            super().check_for_suspension(burst)
        except redis.RedisError as exc:
            if not outage.is_outage(exc):
                raise
            return  # the dequeue that follows meets the outage and waits it out
        self._suspension_checked_at = time.monotonic()

    def _look_for_suspension(self) -> None:
        """While the horse runs a job, whether ``rq suspend`` suspended the worker (at most every
        SUSPENSION_CHECK_GAP seconds): the check before the next job then needs no request of its
        own on the way from this job's end to the next one's start."""
        if time.monotonic() - self._suspension_checked_at < SUSPENSION_CHECK_GAP:
            return
        try:
            self._seen_suspended = bool(is_suspended(self.connection, self))
        except redis.RedisError as exc:
            if not outage.is_outage(exc):
                raise
            return
        self._suspension_checked_at = time.monotonic()

    def execute_job(self, job: Job, queue: Queue) -> None:
        """RQ's, in the worker's reused horse (see ``workqueue.worker.horse``) instead of a fork per job,
        with the job's start recorded in one round trip (``job_steps.start``). With ``--concurrency``
        above 1, the horse runs this job and those claimed while it runs (:meth:`_run_concurrently`)."""
        if self.concurrency > 1:
            self._run_concurrently(job, queue)
            return
        started = getattr(job, "started_execution", None)
        if started is None:  # the claim left it unstarted
            beat = time.monotonic() - self._beaten_at >= HEARTBEAT_MIN_GAP
            started = job_steps.start(self, job, queue, heartbeat=beat)
            if beat:
                self._beaten_at = time.monotonic()
        try:
            self._run_in_horse(job, queue, started)
        finally:
            self._hard_killed = None
            # RQ's loop heartbeats right after each job: on the way to the next one's start. The
            # heartbeat as the next job is handed to the horse keeps the worker alive instead.
            self._skip_beat = True

    def _run_in_horse(self, job: Job, queue: Queue, execution: Execution) -> None:
        """Hand the job to the horse (forking one if there is none) and watch it, heartbeating,
        until it answers that the job has ended, or dies trying (:meth:`_horse_died`)."""
        handed = time.monotonic()
        horse = self._hand_to_horse(job, queue, execution)
        job.started_at = now()
        self.heartbeat()  # at most once a second (see heartbeat), and while the horse works
        self._look_for_suspension()
        answer = self._watch_horse(horse, job, execution)
        rq_compat.set_horse_pid(self, 0)
        self.executions.pop(execution.id, None)
        self._last_run = time.monotonic() - handed if answer is not None else None
        if answer is not None and "ends" in answer:  # its end handed over: written with others (held_ends)
            self.held_ends.add(answer["ends"])
            if len(self.held_ends) >= MAX_HELD_ENDS:
                self._write_held_ends_now()
        if answer is not None:  # the horse ran the job to its end and recorded it (or handed it over)
            if not answer["ok"] or horse.worn_out(answer):
                self._retire_horse()
            if answer["ok"] is None:
                self._fail_if_unrecorded(job, queue, execution, "the work horse failed to record the job's end")
            return
        self._horse = None
        self._horse_died(horse, job, queue, execution)

    def _hand_to_horse(self, job: Job, queue: Queue, execution: Execution) -> Horse:
        """Send the job to the horse; one that died waiting (killed between jobs) is replaced."""
        raw = getattr(job, "claimed_hash", None)
        message = {
            "job": job.id,
            "queue": queue.name,
            "execution": execution.id,
            "started_at": (job.started_at or now()).timestamp(),
            "hash": raw or None,
        }
        if self._horse is None:
            self._horse = Horse(self._serve_as_horse)
        rq_compat.set_horse_pid(self, self._horse.pid)  # before it has the job: a cold stop then kills it too
        try:
            self._horse.send(message)
        except BrokenPipeError:  # the horse died waiting for this job (killed between jobs): a new one runs it
            self._horse.reap()
            self._horse = Horse(self._serve_as_horse)
            rq_compat.set_horse_pid(self, self._horse.pid)
            self._horse.send(message)
        return self._horse

    def _watch_horse(self, horse: Horse, job: Job, execution: Execution) -> dict[str, Any] | None:
        """Wait for the horse's answer (None: it died), heartbeating meanwhile. A horse still
        running HARD_KILL_GRACE after the job's timeout (the task ignored the alarm) is killed;
        RQ's own limit is the timeout plus 60 s."""
        timeout = job.timeout or Queue.DEFAULT_TIMEOUT
        hard_deadline = time.monotonic() + timeout + HARD_KILL_GRACE if timeout > 0 else None
        self._handed_back_at = None
        # Jobs claimed ahead wait behind this one for ahead_hold seconds at most (see claiming).
        hold_until = time.monotonic() + self.ahead_hold
        beat_at = time.monotonic() + self.job_monitoring_interval
        while True:
            wake = beat_at if hard_deadline is None else min(beat_at, hard_deadline)
            if self._ahead:
                wake = min(wake, time.monotonic() + AHEAD_LOOK, max(hold_until, time.monotonic() + 0.01))
            ends_due = self.held_ends.due()
            if ends_due is not None:
                wake = min(wake, ends_due)
            answer = horse.wait(max(0.0, wake - time.monotonic()))
            if answer is not WAITING:
                if answer is not None and self._ahead and time.monotonic() >= hold_until:
                    # it ran the hold's length: those held go back now, whether its end or the wake for
                    # the hold came first (a job of exactly that length must not keep them)
                    self.settle_ahead(True, f"job {job.id} has run {self.ahead_hold:g} s")
                return answer
            if ends_due is not None and time.monotonic() >= ends_due:
                self._write_held_ends_now()
            if self._ahead:
                self.settle_ahead(time.monotonic() >= hold_until, f"job {job.id} has run {self.ahead_hold:g} s")
            now_ = time.monotonic()
            if now_ < beat_at and (hard_deadline is None or now_ < hard_deadline):
                continue  # woken for the jobs held ahead only
            beat_at = now_ + self.job_monitoring_interval
            # Found handed back (a heartbeat saw it) and still running a second later: not a horse
            # that has just recorded its end and not yet answered, but a run superseded. Stop it.
            if self._handed_back_at is not None and time.monotonic() - self._handed_back_at >= 1.0:
                if self._superseded_run is None:
                    self._stop_superseded_run(job, execution)
                continue
            if hard_deadline is not None and time.monotonic() >= hard_deadline and not self._hard_killed:
                self._hard_killed = (
                    f"JobTimeoutException: job exceeded its {timeout} s timeout and ignored the alarm; killed"
                )
                self.log.warning("Worker %s: job %s overran its timeout; killing its work horse", self.name, job.id)
                self.kill_horse(signal.SIGKILL)
                continue
            try:
                self.maintain_heartbeats(job, execution)
            except redis.RedisError as exc:  # Redis refusing writes (out of memory): the job runs on
                if not outage.is_outage(exc):
                    raise
                self.log.warning("Worker %s: could not heartbeat (%s); the job runs on", self.name, exc)

    def _write_held_ends_now(self) -> None:
        """Write the ends held (``held_ends``) while a job runs; Redis refusing them for now leaves
        them held (the next look tries again, the worker's next claim too)."""
        try:
            self.write_held_ends()
        except redis.RedisError as exc:
            if not outage.is_outage(exc):
                raise
            self.log.warning("Worker %s: could not write the ends held (%s); trying again", self.name, exc)

    def _horse_died(self, horse: Horse, job: Job, queue: Queue, execution: Execution) -> None:
        """The horse ended without answering: a stopped job, a task that ended its process, or a
        crash; the job ends failed with the reason, unless it had already ended."""
        retpid, ret_val, rusage = horse.reap()
        self._horse_ended(job, queue, execution, retpid, ret_val, rusage)

    def _horse_ended(
        self, job: Job, queue: Queue, execution: Execution, retpid: int, ret_val: int, rusage: Any
    ) -> None:
        """What :meth:`_horse_died` records for ``job``, once the horse is reaped."""
        if self._superseded_run == execution.id:
            self._forget_superseded_run(job, execution)
            return
        if rq_compat.stopped_job_id(self) == job.id:
            rq_compat.handle_stopped_job(self, job, queue, execution)
            return
        if ret_val == os.EX_OK:
            self._fail_if_unrecorded(
                job,
                queue,
                execution,
                "the work horse exited without recording a result (the task ended its process, e.g. with os._exit)",
            )
            return
        signal_msg = f" (signal {os.WTERMSIG(ret_val)})" if os.WIFSIGNALED(ret_val) else ""
        exc_string = f"Work-horse terminated unexpectedly; waitpid returned {ret_val}{signal_msg}; "
        self.log.warning("Worker %s: job %s failed (%s)", self.name, job.id, exc_string)
        if job.get_status(refresh=True) not in (JobStatus.FINISHED, JobStatus.FAILED):
            job.ended_at = now()
            self.handle_work_horse_killed(job, retpid, ret_val, rusage)
            self.handle_job_failure(job, queue=queue, exc_string=exc_string, execution=execution)

    # --- several jobs at once (--concurrency N > 1) ---------------------------------------------

    def _retire_horse(self) -> None:
        if self._horse is not None:
            self._horse.retire()
            self._horse = None

    def teardown(self) -> None:
        """RQ's, and the horse goes too. With Redis away, the worker leaves without unregistering:
        its registration lapses by itself (HEARTBEAT_TTL)."""
        try:
            self._write_ends_before_stopping()
            tallies.flush_all()  # those ends' counts (held_ends)
            self.settle_ahead(give_back=True, why="the worker stops")
            self._leave_bells()
            super().teardown()
        except redis.RedisError as exc:
            if not outage.is_outage(exc):
                raise
            self.log.warning(
                "Worker %s: %s; leaving without unregistering (its registration lapses in %d s)",
                self.name,
                outage.describe(exc),
                HEARTBEAT_TTL,
            )
        finally:
            self.stop_scheduler_left()
            self._retire_horse()

    def _leave_bells(self) -> None:
        """Out of the idle bells' sets (``workqueue.bells``), once, without riding out an outage: a
        bell for a worker gone is skipped anyway, and the sets lapse."""
        try:
            bells.forget(without_retries(self.connection, socket_timeout=1.0), self.name, self.queue_names())
        except redis.RedisError as exc:
            self.log.debug("Worker %s: left in the idle sets (%s)", self.name, exc)

    def set_state(self, state: str, pipeline: Any = None) -> None:
        """RQ's, without the round trip when the state is already the one written last (RQ sets
        "idle" twice per job); while Redis refuses writes or is away, only in memory (a worker going
        idle during an outage must not quit over it)."""
        if pipeline is None and state == rq_compat.worker_state(self):
            return
        try:
            super().set_state(state, pipeline)
        except redis.RedisError as exc:  # kept in memory; the next registration writes it (heartbeat)
            if not outage.is_outage(exc):
                raise
            self.log.debug("Worker %s: state %s not written: %s", self.name, state, outage.describe(exc))

    def unsubscribe(self) -> None:
        """RQ's, with the listening thread told to stop first, so the reply to the unsubscription
        wakes it to exit; in RQ's order it goes back to waiting, and the worker's exit waits a
        second for it."""
        if self.pubsub_thread:
            self.pubsub_thread.stop()
        super().unsubscribe()

    def _start_scheduler(
        self, burst: bool = False, logging_level: str | None = "INFO", *args: Any, **kwargs: Any
    ) -> None:
        """RQ's, with a scheduler that dies with this worker instead of running on as an orphan."""
        level = logging_level if logging_level is not None else self.log.level
        scheduler = Scheduler(self.queues, connection=self.connection, logging_level=level, serializer=self.serializer)
        self.scheduler = scheduler
        scheduler.acquire_locks()
        if not scheduler.acquired_locks:
            return
        if not burst:
            scheduler.start()
            return
        try:
            scheduler.register_birth()
            scheduler.enqueue_scheduled_jobs()
        finally:
            scheduler.release_locks()
            scheduler.register_death()

    def setup_work_horse_signals(self) -> None:
        """RQ's, and the horse dies with its worker (PDEATHSIG SIGKILL, set in the horse itself
        after the fork); a worker that died before that was set is noticed here."""
        super().setup_work_horse_signals()
        die_with_parent(signal.SIGKILL)
        if os.getppid() != self._worker_pid:
            os._exit(1)


class RoundRobinCatalogueWorker(CatalogueWorker, RoundRobinWorker):
    """Serves its queues in turn (RQ's RoundRobinWorker), so none starves."""


class RandomCatalogueWorker(CatalogueWorker, RandomWorker):
    """Takes its queues in a random order each time (RQ's RandomWorker)."""


#: The consumer's ``--order``: which worker class serves several queues how.
WORKER_CLASSES: dict[str, type[CatalogueWorker]] = {
    "priority": CatalogueWorker,
    "round-robin": RoundRobinCatalogueWorker,
    "random": RandomCatalogueWorker,
}
