"""The worker: RQ's forking Worker, held to JSON and the catalogue, and stoppable from anywhere.

Beyond RQ's own behaviour:
- it heartbeats every few seconds and its registration expires soon after its last heartbeat, so
  a worker that was SIGKILLed or lost with its machine is noticed quickly (see ``recovery.sweep``);
- its work horse dies with it (PDEATHSIG), so a job never runs on behind a dead worker;
- a stop at once (``kill_workers --now``, or a second signal) hands the running job back instead
  of leaving it "started";
- a worker stopped on purpose exits with :data:`STOPPED_ON_PURPOSE`, so the pool does not replace it;
- progress reported by a task is stored on the running job;
- a Redis outage (not answering, or refusing writes: OOM, MISCONF, READONLY, LOADING) is waited out
  with backoff, never a reason to quit; a stop signal is still honoured within seconds during one,
  and a worker whose pool is gone (PDEATHSIG, or its parent changed) stops.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import random
import signal
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from rq import Queue, Retry, Worker, worker_registration
from rq.callbacks import execute_success_callback
from rq.command import parse_payload
from rq.exceptions import DequeueTimeout, StopRequested
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.scheduler import RQScheduler
from rq.utils import now
from rq.worker import RandomWorker, RoundRobinWorker, WorkerStatus

from task_def import progress as task_progress
from workqueue import batches, outage, recovery, rq_compat
from workqueue.connection import without_retries
from workqueue.control import SHUTDOWN_NOW
from workqueue.guarded import SUPERSEDED, Guard, note_superseded, run_guarded
from workqueue.jobs import SERIALIZER, UNREADABLE, CatalogueJob
from workqueue.replies import as_bytes
from workqueue.settings import (
    HARD_KILL_GRACE,
    HEARTBEAT_INTERVAL,
    HEARTBEAT_MIN_GAP,
    HEARTBEAT_TTL,
    MULTI_QUEUE_POLL,
    OUTAGE_MAX_BACKOFF,
    SUSPENSION_CHECK_GAP,
)
from workqueue.worker import job_steps, progress
from workqueue.worker.horse import WAITING, Horse, serve

log = logging.getLogger(__name__)

#: Exit code of a worker process stopped on purpose (by a kill script), as opposed to one that died.
STOPPED_ON_PURPOSE = 3

_PR_SET_PDEATHSIG = 1
_stopped_on_purpose = False
_pool_pid: int | None = None


def die_with_parent(sig: int) -> None:
    """Have the kernel send ``sig`` to this process when its parent dies (Linux; elsewhere a no-op)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)


def serve_pool(pid: int) -> None:
    """This process is a worker of the pool process ``pid``. Should it be re-parented (the pool
    died), Redis commands are no longer retried and the worker's loops stop it: a second mechanism
    beside PDEATHSIG. Only this process: its horse and scheduler are not abandoned by the check."""
    global _pool_pid
    _pool_pid = pid
    me = os.getpid()
    outage.abandon_when(lambda: os.getpid() == me and os.getppid() != pid)


def pool_gone() -> bool:
    """Whether this worker's pool process has died (the worker was re-parented)."""
    return _pool_pid is not None and os.getppid() != _pool_pid


def stopped_on_purpose() -> bool:
    """Whether this process's worker was stopped by a command, not by a crash or the pool."""
    return _stopped_on_purpose


class _Scheduler(RQScheduler):
    """RQ's scheduler process, which (unlike RQ's) stops when its worker dies."""

    def _install_signal_handlers(self) -> None:
        rq_compat.scheduler_signal_handlers(self)
        die_with_parent(signal.SIGTERM)

    def request_stop(self, signum: Any = None, frame: Any = None) -> None:
        """RQ's, and Redis commands stop being retried soon (``outage.request_stop``): the loop
        checks the stop only between commands, which an outage would otherwise stretch to minutes."""
        outage.request_stop()
        super().request_stop(signum, frame)


class CatalogueWorker(Worker):
    """RQ's forking worker, held to JSON and the catalogue whoever constructs it."""

    job_class = CatalogueJob

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["serializer"] = SERIALIZER
        kwargs["job_class"] = CatalogueJob
        kwargs.setdefault("worker_ttl", HEARTBEAT_INTERVAL + 15)  # RQ blocks worker_ttl - 15 s per idle poll
        kwargs.setdefault("job_monitoring_interval", HEARTBEAT_INTERVAL)
        super().__init__(*args, **kwargs)
        self._cold = False
        self._stop_reason = "the worker was stopped at once"
        self._hard_killed: str | None = None
        self._registered_at = 0.0
        self._beaten_at = 0.0
        self._suspension_checked_at = -SUSPENSION_CHECK_GAP
        self._horse: Horse | None = None
        self._worker_pid = os.getpid()
        self._outage_noted = ""

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        """RQ's, then the connection and scripts of a job's two requests, so the first job waits for neither.
        A worker started while Redis refuses writes (or is away) waits to register, with backoff.
        Here, not at import, what the worker installs: RQ's serializer lookup kept (``rq_compat.install``)
        and the progress store behind ``report_progress``, which the horse inherits."""
        rq_compat.install()
        task_progress.set_sink(progress.store)
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
        job_steps.prepare(self.connection)

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

    def _claim(self, moved: bytes | None = None):
        """``job_steps.claim`` on the worker's queues: the job, started, and its queue; or None."""
        while True:
            claimed = job_steps.claim(self, rq_compat.ordered_queues(self), moved)
            moved = None
            if not claimed.retry:
                break
        if claimed.job is None or claimed.queue is None:
            if rq_compat.stop_requested(self):  # asked while the claim made the worker look busy: stop now
                raise StopRequested()
            return None
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

    def _wait_and_claim(self, timeout: int | None):
        """Claim a job, waiting up to ``timeout`` seconds for one (None: not at all) in a BLMOVE on
        the first queue, which moves the job into its intermediate list: an atomic hand-over
        (RQ's BLPOP on several queues can lose a job, rq#2236). With several queues the wait is
        cut into MULTI_QUEUE_POLL slices, each followed by a look at every queue. A single queue
        needs no look first: its BLMOVE answers at once if a job is waiting."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if deadline is None or len(rq_compat.ordered_queues(self)) > 1:
                claimed = self._claim()
                if claimed is not None or deadline is None:
                    return claimed
            left = deadline - time.monotonic()
            if left <= 0:
                raise DequeueTimeout(timeout, self.queue_keys())
            first = rq_compat.ordered_queues(self)[0]
            slice_ = left if len(rq_compat.ordered_queues(self)) == 1 else min(MULTI_QUEUE_POLL, left)
            # redis-py annotates BLMOVE's timeout as int; Redis takes seconds with decimals (6.0+).
            moved = self.connection.blmove(first.key, first.intermediate_queue_key, slice_)  # type: ignore[arg-type]
            if moved is not None:
                claimed = self._claim(as_bytes(moved))
                if claimed is not None:
                    return claimed

    def check_for_suspension(self, burst: bool) -> None:
        """RQ's, asked at most every SUSPENSION_CHECK_GAP seconds instead of before every job."""
        if time.monotonic() - self._suspension_checked_at < SUSPENSION_CHECK_GAP:
            return
        try:
            super().check_for_suspension(burst)
        except redis.RedisError as exc:
            if not outage.is_outage(exc):
                raise
            return  # the dequeue that follows meets the outage and waits it out
        self._suspension_checked_at = time.monotonic()

    def execute_job(self, job: Job, queue: Queue) -> None:
        """RQ's, in the worker's reused horse (see ``workqueue.worker.horse``) instead of a fork per job,
        with the job's start recorded in one round trip (``job_steps.start``)."""
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

    def _run_in_horse(self, job: Job, queue: Queue, execution: Execution) -> None:
        """Hand the job to the horse (forking one if there is none) and watch it, heartbeating,
        until it answers that the job has ended, or dies trying.

        A horse still running HARD_KILL_GRACE after the job's timeout (the task ignored the alarm)
        is killed; RQ's own limit is the timeout plus 60 s.
        """
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
        horse = self._horse
        job.started_at = now()
        self.heartbeat()  # at most once a second (see heartbeat), and while the horse works
        timeout = job.timeout or Queue.DEFAULT_TIMEOUT
        hard_deadline = time.monotonic() + timeout + HARD_KILL_GRACE if timeout > 0 else None
        while True:
            wait = self.job_monitoring_interval
            if hard_deadline is not None:
                wait = max(0.0, min(wait, hard_deadline - time.monotonic()))
            answer = horse.wait(wait)
            if answer is not WAITING:
                break
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
        rq_compat.set_horse_pid(self, 0)
        self.executions.pop(execution.id, None)
        if answer is not None:  # the horse ran the job to its end and recorded it
            if not answer["ok"] or horse.worn_out(answer):
                self._retire_horse()
            if answer["ok"] is None:
                self._fail_if_unrecorded(job, queue, execution, "the work horse failed to record the job's end")
            return
        self._horse = None
        retpid, ret_val, rusage = horse.reap()
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

    def _fail_if_unrecorded(self, job: Job, queue: Queue, execution: Execution, why: str) -> None:
        """RQ leaves a job "started" when its horse ends without recording it: fail it instead."""
        if job.get_status(refresh=True) == JobStatus.STARTED:
            self.handle_job_failure(job, queue, exc_string=f"WorkHorseExited: {why}", execution=execution)

    def _serve_as_horse(self, inbox: int, outbox: int) -> None:
        """In the horse: set up as RQ's horse does, then run each job the worker sends."""
        random.seed()
        self.setup_work_horse_signals()
        rq_compat.mark_horse(self)
        self.log = logging.getLogger("rq.worker")
        job_steps.prepare(self.connection)
        queues: dict[str, Queue] = {}

        def run(message: dict) -> bool | None:
            try:
                job = self._job_from(message)
                queue = queues.get(message["queue"]) or queues.setdefault(
                    message["queue"],
                    self.queue_class(
                        message["queue"],
                        connection=self.connection,
                        serializer=self.serializer,
                        job_class=self.job_class,
                    ),
                )
                started = Execution(message["execution"], job.id, self.connection, worker_name=self.name)
                started.created_at = job.started_at or now()
                os.environ["RQ_JOB_ID"] = job.id
                progress.store.running(job.id, message["execution"])
                return self.perform_job(job, queue, started)
            except Exception:  # RQ's horse exits 1 here; ours says so, then exits
                self.log.exception("Worker %s: work horse could not run job %s", self.name, message.get("job"))
                return None

        serve(inbox, outbox, run)

    def _job_from(self, message: dict) -> Job:
        """The job the worker sent, as the worker started it (``job_steps.start``), built from the
        hash the worker read (or read again, if it sent none)."""
        if message.get("hash") is None:
            job = self.job_class.fetch(message["job"], connection=self.connection, serializer=self.serializer)
        else:
            job = job_steps.restore(self.job_class, message["job"], message["hash"], self.connection, self.serializer)
        job.worker_name = self.name
        job.started_at = job.last_heartbeat = datetime.fromtimestamp(message["started_at"], UTC)
        rq_compat.set_job_status(job, JobStatus.STARTED)
        job.started_by_worker = True  # type: ignore[attr-defined]
        job.count_failure_in_end = True  # type: ignore[attr-defined]
        return job

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        """Nothing left to do in the horse for a job the worker started (``job_steps.start``); RQ's
        otherwise, always leaving the intermediate list (a job is always dequeued into it)."""
        if getattr(job, "started_by_worker", False):
            self.procline(f"Processing {job.func_name} from {job.origin} since {time.time()}")
            return
        super().prepare_job_execution(job, remove_from_intermediate_queue=True)

    def _finalize_success(self, job: Job, queue: Queue, execution_: Execution, return_value: Any) -> None:
        """RQ's, with the job's end, its batch's count and the statistics in one transaction
        (``job_steps.finish``). Retry results and repeats take RQ's way."""
        if isinstance(return_value, Retry) or job.repeats_left:
            return rq_compat.finalize_success(self, job, queue, execution_, return_value)
        job.ended_at = now()
        rq_compat.set_job_result(job, return_value)
        rq_compat.set_job_status(job, JobStatus.FINISHED)
        callback = rq_compat.success_callback_name(job)
        ours = callback == batches.ON_SUCCESS
        if callback and not ours:
            execute_success_callback(job, self.death_penalty_class, return_value)
        if not job_steps.finish(self, job, queue, execution_, count_in_batch=ours):
            return  # superseded: the job was handed back meanwhile; noted, not recorded
        job.send_webhooks(JobStatus.FINISHED)
        self.log.info("Worker %s: %s: Job OK (%s)", self.name, job.origin, job.id)

    def _retire_horse(self) -> None:
        if self._horse is not None:
            self._horse.retire()
            self._horse = None

    def teardown(self) -> None:
        """RQ's, and the horse goes too. With Redis away, the worker leaves without unregistering:
        its registration lapses by itself (HEARTBEAT_TTL)."""
        try:
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
            self._retire_horse()

    def handle_job_failure(
        self, job: Job, queue: Queue, started_job_registry: Any = None, exc_string: str = "", execution: Any = None
    ) -> None:
        """RQ's, in one atomic step guarded by the job's execution (``guarded.run_guarded``): the
        failure, each attempt's error on the job (RQ keeps only the last), the batch's count. A run
        whose job was handed back meanwhile writes none of it, only a note that it was superseded;
        a failure Redis refuses for now (out of memory) is tried again, never half written."""
        if self._hard_killed:
            exc_string = self._hard_killed
        # RQ runs the job's failure (or stopped) callback itself when the task raised in the horse,
        # or was stopped; a horse that crashed or was killed gets none: count its end here.
        stopped = rq_compat.stopped_job_id(self) == job.id
        retry = bool(job.should_retry) and not stopped
        # In the horse, the batch's failure callback leaves the count to this step (batches.task_failed).
        ours = rq_compat.failure_callback_name(job) == batches.ON_FAILURE and getattr(
            job, "count_failure_in_end", False
        )
        count = (not rq_compat.is_horse(self) or ours) and not stopped and not retry
        lines = exc_string.strip().splitlines()
        retries_left = job.retries_left

        def build(pipe: Any) -> None:
            try:
                job.get_meta(refresh=True)
                recovery.note_attempt(job, exc_string, self.name)
                pipe.hset(job.key, "meta", rq_compat.serialized_meta(job))
            except (redis.RedisError, *UNREADABLE):
                self.log.warning("Worker %s: could not record the error of job %s", self.name, job.id, exc_info=True)
            if stopped:
                job.set_status(JobStatus.STOPPED, pipeline=pipe)
            elif not retry:
                job.set_status(JobStatus.FAILED, pipeline=pipe)
            self.cleanup_execution(job, pipeline=pipe, execution=execution)
            if not self.disable_default_exception_handler and not retry:
                rq_compat.handle_job_failure(
                    job,
                    exc_string,
                    pipe,
                    worker_name=self.name,
                    execution_id=execution.id if execution else None,
                    execution_started_at=execution.created_at if execution else None,
                    execution_ended_at=job.ended_at,
                )
            self.increment_failed_job_count(pipe)
            if job.started_at and job.ended_at:
                self.increment_total_working_time(job.ended_at - job.started_at, pipe)
            if retry and retries_left is not None:  # RQ's Job.retry, its status written in this transaction
                job.retries_left = retries_left
                interval = job.get_retry_interval()
                job.retries_left = retries_left - 1
                if interval:
                    rq_compat.set_job_status(job, JobStatus.SCHEDULED)
                    queue.schedule_job(job, now() + timedelta(seconds=interval), pipeline=pipe)
                else:
                    rq_compat.enqueue_job(queue, job, pipeline=pipe, at_front=job.enqueue_at_front_on_retry)
            if count:
                batches.record_end(pipe, job, "failed", detail=lines[-1] if lines else "the job failed")

        guard = Guard.holds(job, execution.id) if execution is not None else Guard("", "", [])
        try:
            replies = run_guarded(self.connection, build, guard, what=f"the failure of job {job.id}")
        except Exception:  # as RQ: log; the job stays started, for a sweep to hand back
            self.log.exception("Worker %s: failed to persist failure of job %s", self.name, job.id)
            return
        finally:
            if stopped:
                rq_compat.clear_stopped_job(self)
        if replies is SUPERSEDED:
            note_superseded(self.connection, job.id, execution.id, self.name, f"failed: {lines[-1] if lines else ''}")
            return
        if not retry and not stopped:
            job.send_webhooks(JobStatus.FAILED, exc_string=exc_string)
        if not retry:
            rq_compat.enqueue_dependents_safely(self, queue, job)
        rq_compat.release_slot_safely(self, job)

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        """RQ's heartbeat, in one round trip, lapsing HEARTBEAT_TTL seconds after the last one.

        It also re-registers the worker: if Redis was away longer than the TTL, a sweep may have
        unregistered this live worker, which would otherwise stay invisible to the dashboard and
        the kill scripts.
        """
        if pipeline is None and timeout is None and time.monotonic() - self._beaten_at < HEARTBEAT_MIN_GAP:
            return  # RQ heartbeats three times per job on its own; with a 10 s lapse one a second is plenty
        pipe = pipeline if pipeline is not None else self.connection.pipeline()
        # At most once per interval, not on every job's heartbeats: it only matters after an outage.
        if self.birth_date is not None and time.monotonic() - self._registered_at >= HEARTBEAT_INTERVAL:
            self._registered_at = time.monotonic()
            pipe.hset(self.key, mapping={**self.serialize(), "state": rq_compat.worker_state(self)})
            worker_registration.register(self, pipe)
        super().heartbeat(min(timeout or HEARTBEAT_TTL, HEARTBEAT_TTL), pipe)
        if pipeline is None:
            try:
                pipe.execute()
            except redis.RedisError as exc:  # skipped: the dequeue that follows waits the outage out
                if not outage.is_outage(exc):
                    raise
                self.log.debug("Worker %s: heartbeat skipped: %s", self.name, outage.describe(exc))
                return
            self._beaten_at = time.monotonic()

    def maintain_heartbeats(self, job: Job, execution: Execution) -> None:
        """RQ's heartbeat during a long job, but the worker's registration still lapses HEARTBEAT_TTL
        after it: RQ gives a worker hash it finds gone a lifetime of a minute, so a worker killed
        then would keep its job waiting that long (our heartbeat re-registers it instead)."""
        try:
            self._maintain_heartbeats(job, execution)
        except redis.RedisError as exc:  # the job runs on; its end is recorded once Redis takes it
            if not outage.is_outage(exc):
                raise
            self.log.warning("Worker %s: heartbeat of job %s skipped: %s", self.name, job.id, outage.describe(exc))

    def _maintain_heartbeats(self, job: Job, execution: Execution) -> None:
        with self.connection.pipeline() as pipeline:
            self.heartbeat(HEARTBEAT_TTL, pipeline=pipeline)
            working = (now() - job.started_at).total_seconds() if job.started_at else 0.0
            ttl = int(self.get_heartbeat_ttl(job, working_time=working))
            execution.heartbeat(job.started_job_registry, ttl, pipeline=pipeline)
            index = len(pipeline)
            job.heartbeat(now(), ttl, pipeline=pipeline, xx=True)
            if pipeline.execute()[index] == 1:  # the job was deleted meanwhile (rq#1450): as RQ does
                self.connection.delete(job.key)

    def set_state(self, state: str, pipeline: Any = None) -> None:
        """RQ's, without the round trip when the state is already the one written last (RQ sets
        "idle" twice per job)."""
        if pipeline is None and state == rq_compat.worker_state(self):
            return
        super().set_state(state, pipeline)

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
        self.scheduler = _Scheduler(
            self.queues, connection=self.connection, logging_level=level, serializer=self.serializer
        )
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
        """RQ's, and the horse dies with its worker (PDEATHSIG SIGKILL, set in the horse itself
        after the fork); a worker that died before that was set is noticed here."""
        super().setup_work_horse_signals()
        die_with_parent(signal.SIGKILL)
        if os.getppid() != self._worker_pid:
            os._exit(1)

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
        """RQ's warm stop, honoured during a Redis outage too: from ``settings.OUTAGE_STOP_GRACE`` seconds
        on, Redis commands fail instead of being retried for minutes. A worker whose pool died while
        Redis is not answering stops at once (its horse killed, its job handed back if Redis takes
        it, else by the sweep once Redis is back): nobody is left to wait for."""
        outage.request_stop()
        if not self._cold and pool_gone() and not self._redis_answers():
            self._cold = True
            self._stop_reason = "its consumer's pool died while Redis was not answering"
        if self._cold:
            return self.request_force_stop(signum, frame)
        try:
            return super().request_stop(signum, frame)
        except redis.RedisError as exc:  # a busy worker's note of the stop: it still stops after its job
            if not outage.is_outage(exc):
                raise
            self.log.warning("Worker %s: %s; stopping after the current job", self.name, outage.describe(exc))

    def _redis_answers(self) -> bool:
        """A quick look (a second at most, no retries): does Redis answer now?"""
        try:
            return bool(without_retries(self.connection, socket_timeout=1.0).ping())
        except redis.RedisError:
            return False

    def request_force_stop(self, signum: int, frame: Any) -> None:
        """Cold shutdown, however soon after the first signal; the running job is handed back.

        RQ ignores a second signal within a second of the first, because under a terminal the
        pool and the worker both receive each Ctrl-C. Our pool runs each worker in its own process
        group and forwards each signal once, so a quick second Ctrl-C is meant.
        """
        self.log.warning("Worker %s: cold shut down", self.name)
        # The job it claimed, whether or not its horse has it yet: the claim marks it started first.
        outage.request_stop()
        try:
            job = self.get_current_job() if self.executions else None
        except redis.RedisError as exc:
            if not outage.is_outage(exc):
                raise
            job = None  # left started: the sweep hands it back once Redis answers
        if self.horse_pid:
            self.kill_horse(signal.SIGKILL)
            self.wait_for_horse()
            rq_compat.set_horse_pid(self, 0)
        if job is not None:
            reason = self._stop_reason if self._cold else "the consumer was stopped at once"
            try:
                recovery.hand_back(self.connection, job, reason, self.name)
            except redis.RedisError as exc:
                if not outage.is_outage(exc):
                    raise
                self.log.warning(
                    "Worker %s: %s, so job %s stays started; the sweep hands it back once Redis answers",
                    self.name,
                    outage.describe(exc),
                    job.id,
                )
        raise SystemExit()


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
