"""What a job may be and what a worker will run: JSON only, catalogue functions only.

RQ resolves a job's function (and its callbacks) by importing whatever dotted path Redis holds, and
unpickles by default. Here every job is JSON, and :class:`CatalogueJob` answers ``func`` from the
task catalogue alone: a job naming anything else fails with a reason, its path never imported.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import redis
from rq.exceptions import DeserializationError, NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import BaseRegistry, FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry
from rq.results import Result
from rq.serializers import JSONSerializer
from rq.utils import str_to_date

import task_def
from workqueue import async_tasks, limits, lua, rq_compat
from workqueue.errors import BadInput, JobRefused, UnreadableJob
from workqueue.replies import decoded

SERIALIZER = JSONSerializer

#: Callback functions a job may name (workqueue.batches'); anything else is refused like a foreign task.
ALLOWED_CALLBACKS: frozenset[str] = frozenset(
    {"workqueue.batches.task_finished", "workqueue.batches.task_failed", "workqueue.batches.task_stopped"}
)

#: The job hash's timestamps, which :meth:`CatalogueJob.restore` reads itself.
_DATES = ("created_at", "enqueued_at", "started_at", "ended_at", "last_heartbeat")

#: Fields of a job hash nothing reads once the job has succeeded (its callbacks, retries, timeout,
#: heartbeat, TTLs): :func:`keep_result` drops them, a third of a finished job's hash. (A late
#: heartbeat that writes ``last_heartbeat`` again is told from one on a deleted job by the hash's
#: other fields: ``CatalogueWorker._maintain_heartbeats``.)
SPENT_FIELDS = (
    "success_callback_name", "success_callback_timeout", "failure_callback_name", "failure_callback_timeout",
    "stopped_callback_name", "stopped_callback_timeout", "retry_intervals", "retries_left", "timeout",
    "last_heartbeat", "failure_ttl", "result_ttl",
)  # fmt: skip


COMPACT_SCRIPT = lua.script("job_compact")
#: A job's whole success after its dependents are read, the compaction included (``end_words``); its
#: text starts with the spent fields' names, so that they go with the script, not with each end.
SUCCESS_SCRIPT = "local SPENT = {" + ", ".join(f"'{name}'" for name in SPENT_FIELDS) + "}\n" + lua.script("job_success")


def keep_result(pipe: redis.client.Pipeline, job: Job, value: Any, changed: dict[str, str] | None = None) -> None:
    """Queue on ``pipe`` the compact record of ``job``'s success: its return value as JSON in the
    job hash's ``result`` field (which RQ's ``Job.restore`` reads), its spent fields deleted (in place:
    ``lua/job_compact.lua`` says why), instead of RQ's result stream. A Redis stream preallocates a 4 KB
    node (``stream-node-max-bytes``) even for one entry: it was two thirds of a finished job's memory.
    Failures keep RQ's stream. ``changed``: fields the end writes (status, timestamps), set in the same
    HSET as the result, not by one of their own. The hash is left without a TTL: the caller's
    transaction sets it (RQ's ``Job.cleanup``)."""
    pipe.eval(COMPACT_SCRIPT, *result_args(job.key, value, changed or {}))


def result_args(job_key: str, value: Any, changed: dict[str, Any]) -> list[Any]:
    """The arguments of :func:`keep_result`'s script after its text: its key count, key and arguments."""
    pairs = [word for pair in changed.items() for word in pair]
    return [1, job_key, SERIALIZER.dumps(value), len(changed), *pairs, *SPENT_FIELDS]


QUEUE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")


def check_queue_name(name: str) -> str:
    """``name`` if it is a valid queue name; raises BadInput saying what is allowed."""
    if not isinstance(name, str) or not QUEUE_NAME.fullmatch(name):
        raise BadInput(
            f"invalid queue name {name!r}: use 1 to 64 letters, digits, '_', '-', '.' or ':', "
            "starting with a letter or digit",
            "queue",
        )
    return name


def _timestamp(value: bytes | str) -> datetime:
    """RQ's timestamp text as a datetime, as ``rq.utils.str_to_date`` reads it, at a tenth of the cost."""
    text = value.decode() if isinstance(value, bytes) else value
    if text.endswith("Z"):
        try:
            return datetime.fromisoformat(text[:-1]).replace(tzinfo=UTC)
        except ValueError:
            pass
    return str_to_date(value)


class CatalogueJob(Job):
    """A job whose function and callbacks are looked up in the catalogue, never imported."""

    def restore(self, raw_data: Any) -> Any:
        """RQ's, with its timestamps read by ``datetime.fromisoformat`` instead of ``strptime``,
        which alone was a tenth of a worker's work per no-op job. A hash of only the fields
        workqueue writes (``rq_compat.OWN_FIELDS``, every job's until it fails) is read in one pass
        (``rq_compat.restore_own_fields``); any other goes through RQ's own code."""
        obj = {field.decode() if isinstance(field, bytes) else field: value for field, value in raw_data.items()}
        if obj.keys() <= rq_compat.OWN_FIELDS:
            rq_compat.restore_own_fields(self, obj, _timestamp)
            return None
        dates = {name: obj.pop(name) for name in _DATES if name in obj}
        restored = super().restore(obj)  # names as text: RQ decodes them no more
        for name, value in dates.items():
            if value:
                setattr(self, name, _timestamp(value))
        return restored

    def _handle_success(
        self,
        result_ttl: int,
        pipeline: Any,
        worker_name: str = "",
        execution_id: str | None = None,
        execution_started_at: datetime | None = None,
        execution_ended_at: datetime | None = None,
    ) -> None:
        """RQ's, with the result kept compactly in the job hash (:func:`keep_result`), not in a stream."""
        self.set_status(JobStatus.FINISHED, pipeline=pipeline)
        self.save(pipeline=pipeline, include_meta=False, include_result=False)
        keep_result(pipeline, self, rq_compat.job_result(self))
        if result_ttl != 0:
            self.finished_job_registry.add(self, result_ttl, pipeline)

    def latest_result(self, timeout: int = 0) -> Result | None:
        """The success kept in the job hash (:func:`keep_result`), else RQ's latest result from its stream."""
        kept = self._kept_result()
        return kept if kept is not None else super().latest_result(timeout)

    def results(self) -> list[Result]:
        kept = self._kept_result()
        return super().results() + ([kept] if kept is not None else [])

    def _kept_result(self) -> Result | None:
        raw, status, ended, worker = self.connection.hmget(self.key, "result", "status", "ended_at", "worker_name")
        if raw is None or status is None or decoded(status) != JobStatus.FINISHED.value:
            return None
        return Result(
            self.id, Result.Type.SUCCESSFUL, self.connection, id="kept", return_value=SERIALIZER.loads(raw),
            created_at=_timestamp(ended) if ended else None, worker_name=decoded(worker) if worker else "",
            serializer=self.serializer,
        )  # fmt: skip

    @property
    def task(self) -> task_def.Task:
        task = task_def.by_path(self.func_name)
        if task is None:
            raise JobRefused(f"refused: {self.func_name!r} is not a task in the task_def catalogue")
        return task

    @property
    def func(self) -> Callable[..., Any]:
        """The task's function, validating its parameters; a failure retrying cannot fix (a job
        refused, invalid parameters, a task's ``PermanentError``) uses up the job's retries, so it
        fails at once instead of being tried again for nothing."""
        try:
            task = self.task
            for name in (
                rq_compat.success_callback_name(self),
                rq_compat.failure_callback_name(self),
                rq_compat.stopped_callback_name(self),
            ):
                self._allowed_callback(name)
            if self.instance is not None or self.args:
                raise JobRefused(f"refused: a {task.name} job takes keyword parameters only")
        except JobRefused:
            self.retries_left = 0
            raise

        def run(**params: Any) -> Any:
            try:
                result = task.func(**task.validate(params))
                if inspect.iscoroutine(result):  # an async def task: on the horse's event loop, this thread waiting
                    result = async_tasks.run(result, self)
            except (task_def.PermanentError, task_def.TaskDefError):
                self.retries_left = 0
                raise
            try:  # RQ would store "Unserializable return value" and call the job finished
                SERIALIZER.dumps(result)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"{task.name} returned a value JSON cannot hold: {exc}") from None
            return result

        return run

    def _allowed_callback(self, name: str | None) -> None:
        if name and name not in ALLOWED_CALLBACKS:
            raise JobRefused(f"refused: callback {name!r} is not an allowed workqueue callback")

    @property
    def started_job_registry(self) -> StartedJobRegistry:
        return self._registry(StartedJobRegistry)

    @property
    def finished_job_registry(self) -> FinishedJobRegistry:
        return self._registry(FinishedJobRegistry)

    @property
    def failed_job_registry(self) -> FailedJobRegistry:
        return self._registry(FailedJobRegistry)

    def _registry(self, kind: type[BaseRegistry]) -> Any:
        """The job's registry of ``kind``, built once per job and queue: RQ builds one at every
        use, and each build checks its serializer against a typing Protocol, which is slow."""
        cache = self.__dict__.setdefault("_registries", {})
        key = (kind, self.origin)
        if key not in cache:
            cache[key] = kind(
                self.origin, connection=self.connection, job_class=self.__class__, serializer=self.serializer
            )
        return cache[key]

    @property
    def success_callback(self):
        self._allowed_callback(rq_compat.success_callback_name(self))
        return super().success_callback

    @property
    def failure_callback(self):
        self._allowed_callback(rq_compat.failure_callback_name(self))
        return super().failure_callback

    @property
    def stopped_callback(self):
        self._allowed_callback(rq_compat.stopped_callback_name(self))
        return super().stopped_callback

    def to_dict(self, include_meta: bool = True, include_result: bool = True) -> dict:
        """RQ's, plus the job's limit key and default limit as fields of their own (from its meta),
        for the claim script to read without parsing the meta (``workqueue.limits``)."""
        return {**super().to_dict(include_meta, include_result), **limits.job_fields(self.meta)}


#: What reading a job not written as JSON raises (a pickled one, say).
UNREADABLE = (ValueError, DeserializationError)


def fetch_job(connection: redis.Redis, job_id: str) -> CatalogueJob | None:
    """The job (None if there is none), read as JSON in full; raises UnreadableJob for one that is
    not JSON (RQ would otherwise only find out later, or keep its metadata as raw bytes)."""
    try:
        job = CatalogueJob.fetch(job_id, connection=connection, serializer=SERIALIZER)
        _ = job.func_name  # the call is deserialized lazily: read it now, so it fails here if it must
    except NoSuchJobError:
        return None
    except UNREADABLE as exc:
        raise UnreadableJob(
            f"job {job_id} is not readable as JSON ({type(exc).__name__}): it was not "
            "written by workqueue, and is left alone"
        ) from None
    if "unserialized" in job.meta:
        raise UnreadableJob(
            f"job {job_id} has metadata that is not JSON: it was not written by workqueue, and is left alone"
        )
    assert isinstance(job, CatalogueJob)  # RQ's fetch builds the class it is called on
    return job
