"""What a job may be and what a worker will run: JSON only, catalogue functions only.

RQ resolves a job's function (and its callbacks) by importing whatever dotted path Redis holds, and
unpickles by default. Here every job is JSON, and :class:`CatalogueJob` answers ``func`` from the
task catalogue alone: a job naming anything else fails with a reason, its path never imported.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any, Callable, Optional

from rq import Worker, get_current_job
from rq.job import Job
from rq.serializers import JSONSerializer

import task_def
from task_def import progress
from workqueue.errors import BadInput, JobRefused

log = logging.getLogger(__name__)

SERIALIZER = JSONSerializer

#: Callback functions a job may name; anything else is refused like a foreign task.
ALLOWED_CALLBACKS: frozenset[str] = frozenset()

_QUEUE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")

#: Progress is written to Redis at most this often per job (and always at 100 %).
PROGRESS_INTERVAL = 0.5


def check_queue_name(name: str) -> str:
    """``name`` if it is a valid queue name; raises BadInput saying what is allowed."""
    if not isinstance(name, str) or not _QUEUE_NAME.fullmatch(name):
        raise BadInput(
            f"invalid queue name {name!r}: use 1 to 64 letters, digits, '_', '-', '.' or ':', "
            "starting with a letter or digit"
        )
    return name


class CatalogueJob(Job):
    """A job whose function and callbacks are looked up in the catalogue, never imported."""

    @property
    def task(self) -> task_def.Task:
        task = task_def.by_path(self.func_name)
        if task is None:
            raise JobRefused(f"refused: {self.func_name!r} is not a task in the task_def catalogue")
        return task

    @property
    def func(self) -> Callable[..., Any]:
        task = self.task
        for name in (self._success_callback_name, self._failure_callback_name, self._stopped_callback_name):
            self._allowed_callback(name)
        if self.instance is not None or self.args:
            raise JobRefused(f"refused: a {task.name} job takes keyword parameters only")

        def run(**params: Any) -> Any:
            return task.func(**task.validate(params))

        return run

    def _allowed_callback(self, name: Optional[str]) -> None:
        if name and name not in ALLOWED_CALLBACKS:
            raise JobRefused(f"refused: callback {name!r} is not an allowed workqueue callback")

    @property
    def success_callback(self):
        self._allowed_callback(self._success_callback_name)
        return super().success_callback

    @property
    def failure_callback(self):
        self._allowed_callback(self._failure_callback_name)
        return super().failure_callback

    @property
    def stopped_callback(self):
        self._allowed_callback(self._stopped_callback_name)
        return super().stopped_callback


class CatalogueWorker(Worker):
    """RQ's forking worker, held to JSON and the catalogue whoever constructs it."""

    job_class = CatalogueJob

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["serializer"] = SERIALIZER
        kwargs["job_class"] = CatalogueJob
        super().__init__(*args, **kwargs)

    def request_force_stop(self, signum: int, frame: Any) -> None:
        """Cold shutdown on the second signal, however soon it follows the first.

        RQ ignores a second signal within a second of the first, because under a terminal the
        pool and the worker both receive each Ctrl-C. Our pool runs each worker in its own process
        group and forwards each signal once, so a quick second Ctrl-C is meant.
        """
        self.log.warning("Worker %s: cold shut down", self.name)
        if self.horse_pid:
            self.kill_horse()
            self.wait_for_horse()
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
