"""The part of the worker that runs a job and records its end: in the horse, the job rebuilt from
what the worker sent, run, and its success or failure written in one guarded step (``guarded``);
in the worker, the failure of a job whose horse died."""

from __future__ import annotations

import ctypes
import heapq
import itertools
import logging
import os
import random
import signal
import threading
import time
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any, ClassVar

import redis
from rq import Queue, Retry, Worker
from rq.callbacks import execute_success_callback
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.timeouts import BaseDeathPenalty, JobTimeoutException, UnixSignalDeathPenalty
from rq.utils import now

from workqueue import async_tasks, batches, dependencies, guarded, recovery, rq_compat, tallies
from workqueue.guarded import SUPERSEDED, Guard, note_superseded, run_guarded
from workqueue.jobs import UNREADABLE
from workqueue.worker import commits, job_steps, progress
from workqueue.worker.horse import serve, serve_threads

log = logging.getLogger(__name__)


class JobStopped(BaseException):
    """Raised in a job's thread, in a horse running several jobs at once, to stop that job alone (a
    ``stop-job`` command, or a run found superseded). Not an Exception, so a task's ``except
    Exception`` does not swallow it."""


def raise_in_thread(thread_id: int, exception: type[BaseException]) -> bool:
    """Raise ``exception`` asynchronously in the thread ``thread_id`` (delivered at its next Python
    instruction: a task blocked in one long C call gets it when the call returns; one waiting for an
    async task's coroutine is woken for it). Whether the thread exists."""
    found = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exception))
    if found > 1:  # never expected: undo, as the C API's documentation says
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)
    async_tasks.wake(thread_id)  # a thread waiting for an async task's coroutine runs no Python code until woken
    return found == 1


def clear_raised(thread_id: int) -> None:
    """Drop an exception raised in the thread ``thread_id`` (:func:`raise_in_thread`) and not yet
    delivered: once a job's run has ended, a stop or timeout meant for it must not reach the next
    job its slot thread runs."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)


class Deadlines:
    """The timeouts of the jobs a horse runs at once, kept by one thread for all of them (a heap of
    deadlines), not a timer thread per job: each starting and ending thread cost a scrape a tenth of
    its CPU. An exception is raised only under the lock that :meth:`cancel` takes, so once
    ``cancel`` returns none is raised any more for that entry (one raised just before may still be
    pending: :func:`clear_raised` drops it)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int]] = []
        #: Each entry still due, by its number: (thread, exception, deadline).
        self._due: dict[int, tuple[int, type[BaseException], float]] = {}
        self._changed = threading.Condition(threading.Lock())
        self._numbers = itertools.count()
        self._owner = 0  # the process whose thread keeps them (a fork's child starts its own)

    def add(self, seconds: float, thread_id: int, exception: type[BaseException]) -> int:
        """Raise ``exception`` in ``thread_id`` in ``seconds`` seconds, unless cancelled; the entry's number."""
        number = next(self._numbers)
        with self._changed:
            if self._owner != os.getpid():
                self._owner = os.getpid()
                self._heap, self._due = [], {}
                threading.Thread(target=self._serve, name="deadlines", daemon=True).start()
            deadline = time.monotonic() + seconds
            self._due[number] = (thread_id, exception, deadline)
            if len(self._heap) > 2 * len(self._due) + 64:  # mostly cancelled entries: keep only those due
                self._heap = [(due[2], n) for n, due in self._due.items()]
                heapq.heapify(self._heap)
            else:
                heapq.heappush(self._heap, (deadline, number))
            if self._heap[0][1] == number:
                self._changed.notify()
        return number

    def cancel(self, number: int) -> None:
        with self._changed:
            self._due.pop(number, None)

    def cancel_thread(self, thread_id: int) -> None:
        """Cancel every entry for ``thread_id`` (a job's run has ended, however it ended)."""
        with self._changed:
            for number in [n for n, due in self._due.items() if due[0] == thread_id]:
                del self._due[number]

    def _serve(self) -> None:
        with self._changed:
            while True:
                while self._heap and self._heap[0][1] not in self._due:
                    heapq.heappop(self._heap)  # cancelled
                if not self._heap:
                    self._changed.wait()
                    continue
                wait = self._heap[0][0] - time.monotonic()
                if wait > 0:
                    self._changed.wait(wait)
                    continue
                _, number = heapq.heappop(self._heap)
                thread_id, exception, _ = self._due.pop(number)
                raise_in_thread(thread_id, exception)


#: The horse's job timeouts (its thread is started by the first job with a timeout).
deadlines = Deadlines()


#: The exceptions :func:`_timeout_exception` made, by (exception, timeout).
_timeout_exceptions: dict[tuple[type[BaseException], Any], type[BaseException]] = {}


def _timeout_exception(exception: type[BaseException], timeout: Any) -> type[BaseException]:
    """A subclass of ``exception`` whose message names ``timeout`` (an async exception is raised by
    its class alone), made once per timeout, not per job."""
    made = _timeout_exceptions.get((exception, timeout))
    if made is None:
        message = f"Task exceeded maximum timeout value ({timeout} seconds)"

        def init(self: BaseException, *args: Any) -> None:
            BaseException.__init__(self, message)

        made = type(exception.__name__, (exception,), {"__init__": init, "__module__": exception.__module__})
        if len(_timeout_exceptions) < 256:  # a few timeouts in practice; never a growing store
            _timeout_exceptions[(exception, timeout)] = made
    return made


class ThreadDeathPenalty(BaseDeathPenalty):
    """A job's timeout in a horse running several jobs at once: as RQ's ``TimerDeathPenalty`` an
    exception raised in the job's thread (SIGALRM cannot be: it is per process), but kept by the
    horse's one :data:`deadlines` thread, not a timer thread per job. RQ's patches the exception
    class's message for each job, so concurrent jobs would share the last one's; this raises a
    subclass made for the timeout. The worker kills a horse whose job ignores it (see
    ``SlotsWorker._run_concurrently``)."""

    def __init__(self, timeout: Any, exception: type[BaseException] = JobTimeoutException, **kwargs: Any) -> None:
        super().__init__(timeout, _timeout_exception(exception, timeout), **kwargs)
        self._thread = threading.get_ident()
        self._entry: int | None = None

    def setup_death_penalty(self) -> None:
        if self._timeout <= 0:
            return
        self._entry = deadlines.add(self._timeout, self._thread, self._exception)

    def cancel_death_penalty(self) -> None:
        if self._entry is not None:
            deadlines.cancel(self._entry)
            self._entry = None


class AlarmDeathPenalty(UnixSignalDeathPenalty):
    """RQ's job timeout by SIGALRM, in a horse running one job at a time, with its handler installed
    once: RQ's installs and removes it around every job, which cost five times the alarm itself
    (~6 us of a no-op job). An alarm that comes with no job armed (one that fired as it was
    cancelled) is ignored, where RQ's default handling would have ended the horse."""

    _armed: ClassVar[AlarmDeathPenalty | None] = None

    def setup_death_penalty(self) -> None:
        if signal.getsignal(signal.SIGALRM) is not _on_alarm:  # the first job, or a task set its own
            signal.signal(signal.SIGALRM, _on_alarm)
        AlarmDeathPenalty._armed = self
        signal.alarm(self._timeout)

    def cancel_death_penalty(self) -> None:
        signal.alarm(0)
        AlarmDeathPenalty._armed = None


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    armed = AlarmDeathPenalty._armed
    if armed is not None:
        armed.handle_death_penalty(signum, frame)


class HorseSideWorker(Worker):
    """RQ's Worker, with a job's run and end as workqueue records them (see the module)."""

    _hard_killed: str | None
    #: Jobs a horse runs at once (``consumer_main.py --concurrency``); 1: one at a time, no threads.
    concurrency: int = 1
    #: Seconds the worker may hold a job's end its one-job horse handed over (``held_ends``); 0: the
    #: horse writes its ends itself.
    end_hold: float = 0.0
    #: In a horse running several jobs: the jobs a stop-job command stopped in their threads, whose
    #: failure is recorded as RQ records a stopped job (:meth:`_finalize_failure`).
    _stopped_in_threads: set[str] | None = None
    _stop_lock = threading.Lock()

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
        if self.concurrency > 1:  # the ends ready at the same moment go to Redis in one request
            guarded.send_ends_through(commits.Committer().send)
        job_steps.prepare(self.connection)
        queues: dict[str, Queue] = {}

        threads: dict[str, int] = {}  # with several jobs at once: each running job's thread
        # A stop is raised in a job's thread only while the job is in ``threads``, under this lock, so
        # that it never reaches the next job its slot thread runs (:func:`settle`).
        threads_lock = threading.Lock()

        def run(message: dict) -> bool | None:
            with threads_lock:
                threads[message["job"]] = threading.get_ident()
            if self._stopped_in_threads is not None:  # no stale mark from an earlier run of the job
                self._stopped_in_threads.discard(message["job"])
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
                progress.store.running(job.id, message["execution"], message.get("hash"))
                return self.perform_job(job, queue, started)
            except Exception:  # RQ's horse exits 1 here; ours says so, then exits
                self.log.exception("Worker %s: work horse could not run job %s", self.name, message.get("job"))
                return None
            finally:
                settle(message["job"])

        def settle(job_id: str) -> None:
            """After a job's run, however it ended: nothing meant for it (its stop, its timeout)
            may be raised any more in its thread, or be pending there (its slot runs other jobs), and
            its progress is forgotten. Safe to call again (``serve_threads`` does, until it completes)."""
            thread = threading.get_ident()
            with threads_lock:
                if threads.get(job_id) == thread:
                    del threads[job_id]
            if self.concurrency > 1:
                deadlines.cancel_thread(thread)
                clear_raised(thread)
            progress.store.ended(job_id)

        def stop(job_id: str, superseded: bool) -> None:
            """Stop one running job, not its neighbours: JobStopped raised in its thread. A job
            stopped by a command is marked stopped for that thread (it ends as RQ ends a stopped
            job: :meth:`_finalize_failure`); a run superseded is not (its end writes nothing)."""
            with threads_lock:
                thread = threads.get(job_id)
                if thread is None:
                    return  # it has just ended
                assert self._stopped_in_threads is not None
                if not superseded:
                    self._stopped_in_threads.add(job_id)
                raise_in_thread(thread, JobStopped)

        if self.concurrency > 1:
            self._stopped_in_threads = set()
            self.death_penalty_class = ThreadDeathPenalty
            serve_threads(inbox, outbox, run, stop, self.concurrency, on_exit=tallies.flush_all, settle=settle)
        if self.death_penalty_class is UnixSignalDeathPenalty:  # RQ's, as a horse that runs one job at a time keeps it
            self.death_penalty_class = AlarmDeathPenalty
        tallies.flush_from_loop()  # one job at a time: its statistics written between jobs, no thread
        if self.end_hold > 0:  # its ends written by the worker, several at once (``held_ends``)
            job_steps.hand_ends_to_worker()
        serve(inbox, outbox, run, on_exit=tallies.flush_all, tick=tallies.tick, handed=job_steps.handed_ends)

    def _finalize_failure(self, job: Job, queue: Queue, execution: Execution, exc_info: Any) -> None:
        """RQ's; but a job stopped in its thread (several jobs at once) ends as RQ's worker ends a
        stopped job (``_handle_stopped_job``): its stopped callback (which counts it in its batch),
        not its failure callback, and the status "stopped"."""
        if self._stopped_in_threads is not None and job.id in self._stopped_in_threads:
            self._stopped_in_threads.discard(job.id)
            job.ended_at = now()
            # RQ's mark of the stopped job is one per worker: stopped jobs are recorded one at a time
            # (another thread's failure compares the mark with its own job, so is not disturbed).
            with self._stop_lock:
                rq_compat.set_stopped_job(self, job.id)
                rq_compat.handle_stopped_job(self, job, queue, execution)  # which clears the mark
            return
        super()._finalize_failure(job, queue, execution, exc_info)

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
        last_progress = progress.store.with_end(job)  # a report still held is written with the end
        if not job_steps.finish(self, job, queue, execution_, count_in_batch=ours, also=last_progress):
            return  # superseded: the job was handed back meanwhile; noted, not recorded
        job.send_webhooks(JobStatus.FINISHED)
        self.log.info("Worker %s: %s: Job OK (%s)", self.name, job.origin, job.id)

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
            self._note_attempt(job, exc_string, pipe)
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
            if retry and retries_left is not None:
                _schedule_retry(job, queue, retries_left, pipe)
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
            dependencies.settle_safely(self.connection, job.id)  # cancel or run (not RQ's: see dependencies)
        rq_compat.release_slot_safely(self, job)

    def _note_attempt(self, job: Job, exc_string: str, pipe: Any) -> None:
        """Queue on ``pipe`` the job's meta with this attempt's error added (``recovery.note_attempt``)."""
        try:
            job.get_meta(refresh=True)
            progress.store.fold_held(job)  # a report still held is written with the failure
            recovery.note_attempt(job, exc_string, self.name)
            pipe.hset(job.key, "meta", rq_compat.serialized_meta(job))
        except (redis.RedisError, *UNREADABLE):
            self.log.warning("Worker %s: could not record the error of job %s", self.name, job.id, exc_info=True)


def _schedule_retry(job: Job, queue: Queue, retries_left: int, pipe: Any) -> None:
    """RQ's Job.retry, its status written in the failure's transaction ``pipe``, not before it."""
    job.retries_left = retries_left
    interval = job.get_retry_interval()
    job.retries_left = retries_left - 1
    if interval:
        rq_compat.set_job_status(job, JobStatus.SCHEDULED)
        queue.schedule_job(job, now() + timedelta(seconds=interval), pipeline=pipe)
    else:
        rq_compat.enqueue_job(queue, job, pipeline=pipe, at_front=job.enqueue_at_front_on_retry)
