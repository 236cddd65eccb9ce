"""Where a task's ``report_progress`` goes on a worker: the running job's meta, at most every
PROGRESS_INTERVAL seconds per job, the last report always kept, and only while the run reporting it
still holds the job (``guarded``).

A report that comes less than PROGRESS_INTERVAL after the job's previous write is held, the newest
replacing the one held before it, and written by the job's next report once the interval has
passed, or with the job's end (its success or failure, in the same transaction): a job's last
report is never lost, and a short job (a scrape: four reports in a fraction of a second) writes one
report on its own and the last with its end. Each write is one request, the meta replaced only if it
is still what this run last knew of it (``lua/meta_swap.lua``): no read first, and a note another
writer added meanwhile (a stop's ``stopped_by``) is merged in, never overwritten.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis
from rq import get_current_job
from rq.job import Job

from workqueue import rq_compat
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
        #: task's calls are told apart by ``get_current_job``, which RQ keeps per thread.
        self._executions: dict[str, str] = {}
        #: Each job's meta as this run last read or wrote it (``meta_swap``'s ARGV[1]).
        self._known: dict[str, bytes] = {}
        #: Each job's newest report not written yet.
        self._held: dict[str, dict] = {}

    def running(self, job_id: str, execution_id: str, raw: dict[bytes, bytes] | None = None) -> None:
        """In the horse: which execution of ``job_id`` reports from now on, and its hash as the
        worker read it when it started the job, if it did (its meta is then written without reading it)."""
        self._executions[job_id] = execution_id
        self._known[job_id] = _UNKNOWN if raw is None else _known(raw.get(b"meta"))
        self._last.pop(job_id, None)
        self._held.pop(job_id, None)

    def ended(self, job_id: str) -> None:
        """In the horse: ``job_id``'s run has ended; forget it (a report still held is dropped:
        its end has written it, or was not written)."""
        self._executions.pop(job_id, None)
        self._last.pop(job_id, None)
        self._known.pop(job_id, None)
        self._held.pop(job_id, None)

    def __call__(self, done: float, total: float, message: str) -> None:
        job = get_current_job()
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
            now = time.monotonic()
            last = self._last.get(job.id)
            if last is not None and now - last < PROGRESS_INTERVAL:
                self._held[job.id] = report  # written by a later report, or with the end
                return
            self._held.pop(job.id, None)
            self._last[job.id] = now
            self._write(job, Guard.holds(job, execution_id), report, _TRIES)
        except redis.RedisError as exc:  # progress is advisory: never fail a job for it
            log.warning("could not store progress of job %s: %s", job.id, exc)
        except Exception:
            log.warning("could not store progress of job %s", job.id, exc_info=True)

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
        report = self._held.pop(job.id, None)
        if report is None:
            return None
        known = self._known.get(job.id, _UNKNOWN)

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
        report = self._held.get(job.id)
        if report is not None:
            job.meta["progress"] = report


#: The worker's progress store, installed as ``task_def.progress``'s sink by ``CatalogueWorker.bootstrap``.
store = ProgressStore()
