"""Where a task's ``report_progress`` goes on a worker: the running job's meta, at most every
PROGRESS_INTERVAL seconds per job, the last report always kept, and only while the run reporting it
still holds the job (``guarded``).

A report that comes less than PROGRESS_INTERVAL after the job's previous write, or after its start
(which counts as one), is held, the newest replacing the one held before it, and written once the
interval has passed: by the job's next report, or by the horse if the job reports nothing more
meanwhile (one thread per horse, started at its first held report), or with the job's end (its
success or failure, in the same transaction) if that comes first. So a job's last report is never
lost, no report waits much more than the interval, and a short job (a scrape: four reports in a
fraction of a second) writes its reports with its end, in no request of their own. Each write is one
request, the meta replaced only if it is still what this run last knew of it (``lua/meta_swap.lua``):
no read first, and a note another writer added meanwhile (a stop's ``stopped_by``) is merged in,
never overwritten.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from rq.job import Job
from rq.timeouts import JobTimeoutException

from workqueue import async_tasks, rq_compat
from workqueue.guarded import META_SWAP_SCRIPT, SUPERSEDED, Guard, run_guarded
from workqueue.jobs import UNREADABLE
from workqueue.settings import PROGRESS_INTERVAL

log = logging.getLogger(__name__)

#: What a run knows of its job's meta, as ``meta_swap``'s ARGV[1] says it: not known yet.
_UNKNOWN = b"?"
#: Tries to replace the meta when other writers keep changing it (each try is one request).
_TRIES = 3


def _known(meta: bytes | None) -> bytes:
    """``meta_swap``'s ARGV[1] for the meta ``meta`` (None: the job has none)."""
    return b"-" if meta is None else b"=" + meta


def _swap(pipe: Any, job: Job, known: bytes, new: bytes) -> None:
    pipe.eval(META_SWAP_SCRIPT, 1, job.key, known, new)


class ProgressStore:
    """Stores ``report_progress`` calls on the running job's meta (see the module), and only while
    the run reporting it still holds the job (a run whose job was handed back writes nothing)."""

    def __init__(self) -> None:
        #: When each job's progress was last written (``time.monotonic``).
        self._last: dict[str, float] = {}
        #: The execution of each job the horse runs (several at once with ``--concurrency``); a
        #: task's calls are told apart by ``async_tasks.current_job`` (RQ's is per thread).
        self._executions: dict[str, str] = {}
        #: Each job's meta as this run last read or wrote it (``meta_swap``'s ARGV[1]).
        self._known: dict[str, bytes] = {}
        #: Each job's newest report not written yet, and the job it is of (for the horse's writer).
        self._held: dict[str, dict] = {}
        self._held_jobs: dict[str, Job] = {}
        #: Each running job's lock: its own writes and the horse's writer's never overlap.
        self._locks: dict[str, threading.Lock] = {}
        #: Jobs whose end (or failure) now writes their held report: the horse's writer leaves them.
        self._ending: set[str] = set()
        #: The horse's writer of reports held past their interval (``_write_when_due``): its thread
        #: and process (a thread does not survive a fork), and when it next looks (inf: at a new hold).
        self._writer: tuple[threading.Thread, int] | None = None
        self._due = threading.Condition()
        self._next_look = float("inf")

    def running(self, job_id: str, execution_id: str, raw: dict[bytes, bytes] | None = None) -> None:
        """In the horse: which execution of ``job_id`` reports from now on, and its hash as the
        worker read it when it started the job, if it did (its meta is then written without reading
        it). The start counts as a write: a report in the next PROGRESS_INTERVAL is held."""
        self._locks[job_id] = threading.Lock()
        self._executions[job_id] = execution_id
        self._known[job_id] = _UNKNOWN if raw is None else _known(raw.get(b"meta"))
        self._last[job_id] = time.monotonic()
        self._held.pop(job_id, None)
        self._held_jobs.pop(job_id, None)
        self._ending.discard(job_id)

    def ended(self, job_id: str) -> None:
        """In the horse: ``job_id``'s run has ended; forget it (a report still held is dropped:
        its end has written it, or was not written)."""
        self._executions.pop(job_id, None)
        self._last.pop(job_id, None)
        self._known.pop(job_id, None)
        self._held.pop(job_id, None)
        self._held_jobs.pop(job_id, None)
        self._ending.discard(job_id)
        self._locks.pop(job_id, None)

    def __call__(self, done: float, total: float, message: str) -> None:
        job = async_tasks.current_job()
        if job is None:
            return
        percent = round(100.0 * done / total, 1) if total > 0 else None
        report = {"done": done, "total": total, "percent": percent, "message": message[:200]}
        execution_id = self._executions.get(job.id, "")
        try:
            if not execution_id:  # not run by one of our horses
                job.meta["progress"] = report
                job.save_meta()
                return
            with self._locks.get(job.id) or threading.Lock():
                now = time.monotonic()
                last = self._last.get(job.id)
                if last is not None and now - last < PROGRESS_INTERVAL:
                    self._held[job.id] = report  # written by a later report, the horse's writer, or the end
                    self._held_jobs[job.id] = job
                    self._look_at(last + PROGRESS_INTERVAL)
                    return
                self._held.pop(job.id, None)
                self._held_jobs.pop(job.id, None)
                self._last[job.id] = now
                self._write(job, Guard.holds(job, execution_id), report, _TRIES)
        except JobTimeoutException:  # the job's own timeout, raised in its thread while it reported: it ends the job
            raise
        except redis.RedisError as exc:  # progress is advisory: never fail a job for it
            log.warning("could not store progress of job %s: %s", job.id, exc)
        except Exception:
            log.warning("could not store progress of job %s", job.id, exc_info=True)

    def _look_at(self, due: float) -> None:
        """Have the horse's writer look at the held reports at ``due`` (monotonic) at the latest."""
        if self._writer is not None and self._writer[1] != os.getpid():  # forked: its condition may be held by no one
            self._writer, self._due, self._next_look = None, threading.Condition(), float("inf")
        with self._due:
            writer = self._writer
            if writer is None or not writer[0].is_alive():
                thread = threading.Thread(target=self._write_when_due, name="progress-writer", daemon=True)
                self._writer = (thread, os.getpid())
                thread.start()
            if due < self._next_look:
                self._next_look = due
                self._due.notify()

    def _write_when_due(self) -> None:
        """The horse's writer: writes each held report once its job's interval has passed (a job
        that reports nothing more, or ends, meanwhile does not keep it waiting)."""
        while True:
            with self._due:
                while time.monotonic() < self._next_look:
                    self._due.wait(min(self._next_look - time.monotonic(), 60.0))
                now = time.monotonic()
                due = [job_id for job_id in list(self._held) if self._last.get(job_id, now) + PROGRESS_INTERVAL <= now]
                later = [self._last.get(job_id, now) + PROGRESS_INTERVAL for job_id in list(self._held)]
                self._next_look = max(now + 0.05, min((t for t in later if t > now), default=float("inf")))
            for job_id in due:
                self._write_held(job_id)

    def _write_held(self, job_id: str) -> None:
        """Write ``job_id``'s held report now (from the horse's writer), unless its job has ended or
        its end writes it."""
        lock = self._locks.get(job_id)
        if lock is None:
            return
        with lock:
            report, job = self._held.pop(job_id, None), self._held_jobs.pop(job_id, None)
            execution_id = self._executions.get(job_id)
            if report is None or job is None or not execution_id or job_id in self._ending:
                return
            self._last[job_id] = time.monotonic()
            try:
                self._write(job, Guard.holds(job, execution_id), report, _TRIES)
            except redis.RedisError as exc:
                log.warning("could not store progress of job %s: %s", job_id, exc)
            except Exception:
                log.warning("could not store progress of job %s", job_id, exc_info=True)

    def _write(self, job: Job, guard: Guard, report: dict, tries: int) -> None:
        """Replace the job's meta with the one this run knows plus ``report``, under ``guard``, in
        one request; if another writer changed it meanwhile, merge theirs and try again (at most
        ``tries`` requests)."""
        for _ in range(tries):
            job.meta["progress"] = report
            known, new = self._known.get(job.id, _UNKNOWN), rq_compat.serialized_meta(job)
            replies = run_guarded(
                job.connection,
                lambda pipe, known=known, new=new: _swap(pipe, job, known, new),
                guard,
                what="progress",
                patience=0,
            )
            if replies is SUPERSEDED or self._answered(job, new, replies[0]):
                return

    def _answered(self, job: Job, new: bytes, reply: Any) -> bool:
        """Whether the meta ``new`` was written (``meta_swap``'s ``reply``); if not, the job's meta
        as it is is taken in (this run's report set on it again by the caller)."""
        if reply == 1:
            self._known[job.id] = _known(new)
            return True
        if isinstance(reply, Exception):
            raise reply
        current = reply[1]
        self._known[job.id] = _known(current)
        try:
            job.meta = job.serializer.loads(current) if current else {}
        except UNREADABLE:  # not ours to read: leave it alone
            log.warning("job %s: its meta is unreadable; its progress is not stored", job.id)
            return True
        return False

    def with_end(self, job: Job) -> Callable[[Any], Callable[[Any], None]] | None:
        """The report of ``job`` still held, to be written in its end's transaction: a function
        that queues it on the end's pipe and answers what to do with its reply (the last of the
        transaction's: if another writer changed the meta meanwhile, it is merged and written
        right after the end, once). None if no report is held."""
        with self._locks.get(job.id) or threading.Lock():  # after a write of the horse's writer, if one is under way
            self._ending.add(job.id)
            report = self._held.pop(job.id, None)
            self._held_jobs.pop(job.id, None)
            known = self._known.get(job.id, _UNKNOWN)
        if report is None:
            return None

        def queue(pipe: Any) -> Callable[[Any], None]:
            job.meta["progress"] = report
            new = rq_compat.serialized_meta(job)
            _swap(pipe, job, known, new)

            def answered(reply: Any) -> None:
                try:
                    if not self._answered(job, new, reply):  # the end is written: this run's own, unguarded
                        self._write(job, Guard("", "", []), report, 1)
                except (redis.RedisError, *UNREADABLE) as exc:
                    log.warning("could not store the last progress of job %s: %s", job.id, exc)

            return answered

        return queue

    def fold_held(self, job: Job) -> None:
        """Set the report of ``job`` still held on its meta, which its failure then writes."""
        with self._locks.get(job.id) or threading.Lock():  # after a write of the horse's writer, if one is under way
            self._ending.add(job.id)
            report = self._held.get(job.id)
        if report is not None:
            job.meta["progress"] = report


#: The worker's progress store, installed as ``task_def.progress``'s sink by ``CatalogueWorker.bootstrap``.
store = ProgressStore()
