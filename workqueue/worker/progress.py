"""Where a task's ``report_progress`` goes on a worker: the running job's meta, throttled, and
only while the run reporting it still holds the job (``guarded``)."""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from rq import get_current_job

from workqueue import rq_compat
from workqueue.guarded import Guard, run_guarded
from workqueue.settings import PROGRESS_INTERVAL

log = logging.getLogger(__name__)


class ProgressStore:
    """Stores ``report_progress`` calls on the running job's meta, throttled, and only while the
    run reporting it still holds the job (a run whose job was handed back writes nothing)."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        #: The execution of each job the horse runs (several at once with ``--concurrency``); a
        #: task's calls are told apart by ``get_current_job``, which RQ keeps per thread.
        self._executions: dict[str, str] = {}

    def running(self, job_id: str, execution_id: str) -> None:
        """In the horse: which execution of ``job_id`` reports from now on."""
        self._executions[job_id] = execution_id
        self._last.pop(job_id, None)

    def ended(self, job_id: str) -> None:
        """In the horse: ``job_id``'s run has ended; forget it."""
        self._executions.pop(job_id, None)
        self._last.pop(job_id, None)

    def __call__(self, done: float, total: float, message: str) -> None:
        job = get_current_job()
        if job is None:
            return
        now = time.monotonic()
        finished = total > 0 and done >= total
        if not finished and now - self._last.get(job.id, 0.0) < PROGRESS_INTERVAL:
            return
        self._last[job.id] = now
        percent = round(100.0 * done / total, 1) if total > 0 else None
        job.meta["progress"] = {"done": done, "total": total, "percent": percent, "message": message[:200]}
        execution_id = self._executions.get(job.id, "")
        try:
            if not execution_id:  # not run by one of our horses
                job.save_meta()
                return

            progress_now = job.meta["progress"]

            def build_progress(pipe: Any) -> None:  # the meta as stored (notes others added), with the progress
                job.get_meta(refresh=True)
                job.meta["progress"] = progress_now
                pipe.hset(job.key, "meta", rq_compat.serialized_meta(job))

            run_guarded(job.connection, build_progress, Guard.holds(job, execution_id), what="progress", patience=0)
        except redis.RedisError as exc:  # progress is advisory: never fail a job for it
            log.warning("could not store progress of job %s: %s", job.id, exc)
        except Exception:
            log.warning("could not store progress of job %s", job.id, exc_info=True)


#: The worker's progress store, installed as ``task_def.progress``'s sink by ``CatalogueWorker.bootstrap``.
store = ProgressStore()
