"""The one place that touches RQ's private names, checked against the RQ release it was written for.

workqueue reaches into RQ where RQ offers no public way: a job's in-memory status and result, its
callback names, its failure and meta writers, a queue's enqueue without dependency checks, a
worker's queue order and stop flags, a pool's worker process arguments. Every such use goes
through a function here, and the methods our subclasses override are listed in
:data:`OVERRIDDEN`; ``tests/test_rq_compat.py`` exercises each against the pinned RQ. Importing
this module on another RQ release fails at once, with one line saying which release to install,
instead of failing later, mid-job, on a renamed attribute.

It also holds :func:`install`, the one change workqueue makes inside RQ (a serializer lookup kept
per serializer), which the entry points that read jobs call explicitly: importing does nothing.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from datetime import datetime
from typing import Any

import rq
import rq.job
import rq.queue
import rq.registry
import rq.results
from rq import serializers
from rq.exceptions import NoSuchJobError
from rq.executions import Execution
from rq.job import UNSERIALIZABLE_RETURN_VALUE_PAYLOAD, Job, JobStatus
from rq.queue import Queue
from rq.utils import as_text, now, parse_timeout
from rq.worker import Worker
from rq.worker_pool import WorkerPool

#: The RQ releases this module was written for (and tested against): ``major.minor``.
SUPPORTED = "3.0"


def check_version(version: str) -> None:
    """Raise ImportError, in one line saying what to install, if ``version`` is not a supported RQ."""
    if version != SUPPORTED and not version.startswith(SUPPORTED + "."):
        major_minor = ".".join(version.split(".")[:2])
        raise ImportError(
            f"workqueue supports RQ {SUPPORTED}.x; this is RQ {major_minor} ({version}): "
            f"pip install 'rq=={SUPPORTED}.*'"
        )


check_version(str(getattr(rq, "__version__", getattr(rq, "VERSION", "unknown"))))

#: Private RQ methods our subclasses override (class, method, the leading parameters we rely on).
#: Checked by tests/test_rq_compat.py: each must still exist on RQ's class with those parameters.
OVERRIDDEN: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("rq.worker.Worker", "_finalize_success", ("self", "job", "queue", "execution", "return_value")),
    ("rq.worker.Worker", "_start_scheduler", ("self", "burst", "logging_level")),
    ("rq.scheduler.RQScheduler", "_install_signal_handlers", ("self",)),
    ("rq.worker.Worker", "_install_signal_handlers", ("self",)),
    ("rq.job.Job", "_handle_success", ("self", "result_ttl", "pipeline", "worker_name")),
    ("rq.group.Group", "_add_jobs", ("self", "jobs", "pipeline")),
)

#: Every private RQ name used through this module or overridden; no other module of workqueue may
#: name them (tests/test_rq_compat.py greps for them).
PRIVATE_NAMES: tuple[str, ...] = (
    "_status",
    "_result",
    "_success_callback_name",
    "_failure_callback_name",
    "_stopped_callback_name",
    "_serialize_meta",
    "_handle_failure",
    "_enqueue_job",
    "_enqueue_async_job",
    "_prepare_for_queue",
    "_persist_job",
    "_job",
    "_state",
    "_ordered_queues",
    "_stop_requested",
    "_stopped_job_id",
    "_horse_pid",
    "_is_horse",
    "_handle_stopped_job",
    "_enqueue_dependents_safely",
    "_release_slot_safely",
    "_burst",
    "_queue_names",
    "_args",
    "_kwargs",
    "_install_signal_handlers",
    "_finalize_success",
    "_start_scheduler",
    "_handle_success",
    "_add_jobs",
    "_success_callback_timeout",
    "_failure_callback_timeout",
    "_stopped_callback_timeout",
    "_dependency_ids",
    "_unreadable_meta",
    "_process",
)


# --- serializer lookup -------------------------------------------------------------------------

_PATCHED_MODULES = (rq.job, rq.queue, rq.registry, rq.results)
_installed = False


def install() -> None:
    """Have RQ resolve each serializer once (idempotent); called by the entry points that read jobs.

    RQ checks the serializer against a typing Protocol each time it builds a Job, a Result, a Queue
    or a registry, several times per job; on Python 3.11 each check costs more than a no-op job's
    own work. The answer for a given serializer never changes, so it is kept.
    """
    global _installed
    if _installed:
        return
    resolve = serializers.resolve_serializer
    known: dict[Any, Any] = {}

    def resolve_once(serializer: Any = None) -> Any:
        try:
            return known[serializer]
        except KeyError:
            known[serializer] = found = resolve(serializer)
            return found
        except TypeError:  # unhashable: not kept
            return resolve(serializer)

    for module in _PATCHED_MODULES:
        module.resolve_serializer = resolve_once  # type: ignore[attr-defined]
    _installed = True
    from workqueue import priorities  # every enqueue of a job with a priority goes to its level's list

    priorities.install()


# --- jobs --------------------------------------------------------------------------------------


def set_job_status(job: Job, status: str) -> None:
    """The job's status in memory only (RQ's ``set_status`` also writes it to Redis)."""
    job._status = status  # type: ignore[assignment]


def set_job_result(job: Job, value: Any) -> None:
    """The job's return value in memory, as RQ's worker keeps it before writing the result."""
    job._result = value


def job_result(job: Job) -> Any:
    """The return value kept in memory (see :func:`set_job_result`), without reading Redis."""
    return job._result


def has_dependencies(job: Job) -> bool:
    """Whether the job was enqueued depending on others, from memory (RQ's ``dependency_ids`` reads Redis)."""
    return bool(job._dependency_ids)


#: The fields of a job hash as workqueue writes it (``queued_hash``) and as it stands until the job
#: fails or is retried (RQ's ``exc_info``, ``number_of_retries``): :func:`restore_own_fields` reads a
#: hash of these alone, for ``CatalogueJob.restore``; any other field sends it through RQ's ``Job.restore``.
OWN_FIELDS = frozenset({
    "created_at", "enqueued_at", "started_at", "ended_at", "last_heartbeat", "data", "origin", "worker_name",
    "description", "group_id", "result", "timeout", "result_ttl", "failure_ttl", "status", "meta", "retries_left",
    "retry_intervals",
    *(f"{kind}_callback_{what}" for kind in ("success", "failure", "stopped") for what in ("name", "timeout")),
})  # fmt: skip


def restore_own_fields(job: Job, obj: dict[str, Any], read_date: Callable[[Any], datetime]) -> None:
    """What RQ's ``Job.restore`` sets on ``job`` from ``obj``, a hash of :data:`OWN_FIELDS` only (its
    field names as text), attribute for attribute (``tests/test_job_restore.py`` holds the two equal),
    in one pass: the worker and its horse each read every job they run. ``read_date``: RQ's
    timestamp text to a datetime, as ``rq.utils.str_to_date``."""
    data = obj.get("data")
    if data is None:
        raise NoSuchJobError(f"Unexpected job format: {obj}")
    try:
        job.data = zlib.decompress(data)
    except zlib.error:
        job.data = data
    get = obj.get
    job.created_at = read_date(v) if (v := get("created_at")) else now()
    job.origin = as_text(v) if (v := get("origin")) else ""
    job.worker_name = v.decode() if (v := get("worker_name")) else None
    job.description = as_text(v) if (v := get("description")) else None
    job.enqueued_at = read_date(v) if (v := get("enqueued_at")) else None
    job.started_at = read_date(v) if (v := get("started_at")) else None
    job.ended_at = read_date(v) if (v := get("ended_at")) else None
    job.last_heartbeat = read_date(v) if (v := get("last_heartbeat")) else None
    job.group_id = as_text(v) if (v := get("group_id")) else None
    if v := get("result"):
        try:
            job._result = job.serializer.loads(v)
        except Exception:  # as RQ's: whatever the serializer raises
            job._result = UNSERIALIZABLE_RETURN_VALUE_PAYLOAD
    job.timeout = parse_timeout(v) if (v := get("timeout")) else None
    job.result_ttl = int(v) if (v := get("result_ttl")) else None
    job.failure_ttl = int(v) if (v := get("failure_ttl")) else None
    job._status = JobStatus(as_text(v)) if (v := get("status")) else JobStatus.CREATED
    if v := get("success_callback_name"):
        job._success_callback_name = v.decode()
    if (v := get("success_callback_timeout")) is not None:
        job._success_callback_timeout = int(v)
    if v := get("failure_callback_name"):
        job._failure_callback_name = v.decode()
    if (v := get("failure_callback_timeout")) is not None:
        job._failure_callback_timeout = int(v)
    if v := get("stopped_callback_name"):
        job._stopped_callback_name = v.decode()
    if (v := get("stopped_callback_timeout")) is not None:
        job._stopped_callback_timeout = int(v)
    job._dependency_ids = []
    job.allow_dependency_failures = None
    job.enqueue_at_front = None
    job.ttl = None
    job._unreadable_meta = None
    try:
        job.meta = job.serializer.loads(v) if (v := get("meta")) else {}
    except Exception:  # as RQ's: depends on the serializer
        job.meta = {"unserialized": get("meta", {})}
        job._unreadable_meta = obj["meta"]
    job.number_of_retries = None
    job.retries_left = int(v) if (v := get("retries_left")) else None
    if v := get("retry_intervals"):
        job.retry_intervals = json.loads(v)
    job.enqueue_at_front_on_retry = False
    job.repeats_left = None
    job.rate_limit_key = None
    job.rate_limit_concurrency = None


def success_callback_name(job: Job) -> str | None:
    """The dotted path of the job's success callback, unresolved (None if it has none)."""
    return job._success_callback_name


def failure_callback_name(job: Job) -> str | None:
    """The dotted path of the job's failure callback, unresolved (None if it has none)."""
    return job._failure_callback_name


def stopped_callback_name(job: Job) -> str | None:
    """The dotted path of the job's stopped callback, unresolved (None if it has none)."""
    return job._stopped_callback_name


def serialized_meta(job: Job) -> bytes:
    """The job's meta as RQ writes it to its hash's ``meta`` field."""
    return job._serialize_meta()


def handle_job_failure(
    job: Job,
    exc_string: str,
    pipeline: Any,
    worker_name: str = "",
    execution_id: str | None = None,
    execution_started_at: datetime | None = None,
    execution_ended_at: datetime | None = None,
) -> None:
    """RQ's record of a failed job (failed registry, failure result) into ``pipeline``."""
    job._handle_failure(
        exc_string,
        pipeline,
        worker_name=worker_name,
        execution_id=execution_id,
        execution_started_at=execution_started_at,
        execution_ended_at=execution_ended_at,
    )


def enqueue_job(queue: Queue, job: Job, pipeline: Any = None, at_front: bool = False) -> Job:
    """RQ's enqueue of an existing job, without its dependency checks, into ``pipeline``."""
    return queue._enqueue_job(job, pipeline=pipeline, at_front=at_front)


def route_enqueue(
    wants: Callable[[Job], bool],
    push: Callable[[Any, Queue, Job, bool], None],
    after: Callable[[Any, Queue, Job], None],
) -> None:
    """Have every enqueue of an existing job (RQ's ``Queue._enqueue_async_job``, the last step of the
    producer's, RQ's scheduler's, a dependency's, a requeue's and a hand-back's) leave the push of a job
    that ``wants(job)`` to ``push(pipeline, queue, job, at_front)`` instead of RQ's push onto its list,
    and queue ``after(pipeline, queue, job)`` behind every push, in the same pipeline.
    RQ's unique enqueue (a script of its own) is left as it is. Called once, by ``priorities.install``."""
    original = Queue._enqueue_async_job

    def enqueue_async_job(
        self: Queue, job: Job, pipeline: Any = None, at_front: bool = False, unique: bool = False
    ) -> Job:
        if unique:
            return original(self, job, pipeline=pipeline, at_front=at_front, unique=unique)
        pipe = pipeline if pipeline is not None else self.connection.pipeline()
        if not wants(job):
            original(self, job, pipeline=pipe, at_front=at_front)
        else:
            # RQ's own steps (rq.queue.Queue._enqueue_async_job), the push left to ``push``.
            if job.get_status(refresh=False) == JobStatus.DEFERRED:
                self.deferred_job_registry.remove(job, pipeline=pipe)
            self._prepare_for_queue(job)
            self._persist_job(job, pipe)
            push(pipe, self, job, at_front)
        after(pipe, self, job)
        if pipeline is None:
            pipe.execute()
        return job

    Queue._enqueue_async_job = enqueue_async_job  # type: ignore[method-assign]


def set_execution_job(execution: Execution, job: Job) -> None:
    """Give an execution its job, so RQ does not fetch it again from Redis."""
    execution._job = job


# --- workers -----------------------------------------------------------------------------------


def worker_state(worker: Worker) -> str:
    """The state the worker last set, in memory (``get_state`` is the same, by name)."""
    return worker._state


def set_worker_state(worker: Worker, state: str) -> None:
    """The worker's state in memory only (RQ's ``set_state`` also writes it to Redis)."""
    worker._state = state


def ordered_queues(worker: Worker) -> list[Queue]:
    """The worker's queues in the order it serves them now (RoundRobinWorker rotates it)."""
    return worker._ordered_queues


def stop_requested(worker: Worker) -> bool:
    """Whether a warm stop was asked of the worker."""
    return worker._stop_requested


def stopped_job_id(worker: Worker) -> str | None:
    """The job a ``stop-job`` command asked this worker to stop (None if none)."""
    return worker._stopped_job_id


def set_stopped_job(worker: Worker, job_id: str) -> None:
    """Mark ``job_id`` as stopped on purpose, as RQ's stop-job command does (its failure is then
    recorded as "stopped"): for a job stopped in its thread, with several at once (``--concurrency``),
    or before it ran, claimed ahead (``worker.claiming``)."""
    worker._stopped_job_id = job_id


def clear_stopped_job(worker: Worker) -> None:
    """Forget the job a ``stop-job`` command named, once its stop is recorded."""
    worker._stopped_job_id = None


def worker_signal_handlers(worker: Worker) -> None:
    """RQ's worker's signal handlers (``Worker._install_signal_handlers``), installed just before its loop."""
    Worker._install_signal_handlers(worker)


def set_stop_requested(worker: Worker) -> None:
    """RQ's loop stops before its next job, as after RQ's warm stop of a busy worker."""
    worker._stop_requested = True


def set_horse_pid(worker: Worker, pid: int) -> None:
    """The pid RQ's worker kills and waits for as its horse (0: none)."""
    worker._horse_pid = pid


def is_horse(worker: Worker) -> bool:
    """Whether this process is the worker's horse."""
    return worker._is_horse


def mark_horse(worker: Worker) -> None:
    """This process is the worker's horse from now on (as RQ's fork does)."""
    worker._is_horse = True


def handle_stopped_job(worker: Worker, job: Job, queue: Queue, execution: Execution) -> None:
    """RQ's record of a job ended by a ``stop-job`` command."""
    worker._handle_stopped_job(job, queue, execution)


def enqueue_dependents_safely(worker: Worker, queue: Queue, job: Job) -> None:
    """RQ's enqueue of the job's dependents, logging instead of raising."""
    worker._enqueue_dependents_safely(queue, job)


def release_slot_safely(worker: Worker, job: Job) -> None:
    """RQ's release of the job's rate-limit slot, logging instead of raising."""
    worker._release_slot_safely(job)


def finalize_success(worker: Worker, job: Job, queue: Queue, execution: Execution, return_value: Any) -> None:
    """RQ's own end of a job that returned (``Worker._finalize_success``), bypassing our override."""
    Worker._finalize_success(worker, job, queue, execution, return_value)


def scheduler_running(worker: Worker) -> bool:
    """Whether the worker's RQ scheduler process (``RQScheduler._process``) runs still: started by
    this process and not yet ended (a child that ended is reaped by the look)."""
    process = getattr(worker.scheduler, "_process", None) if worker.scheduler else None
    return process is not None and not worker._is_horse and process.is_alive()  # not started: not alive


def scheduler_signal_handlers(scheduler: Any) -> None:
    """RQ's scheduler's signal handlers (``RQScheduler._install_signal_handlers``)."""
    from rq.scheduler import RQScheduler

    RQScheduler._install_signal_handlers(scheduler)


# --- the pool ----------------------------------------------------------------------------------


def process_arguments(process: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The target's arguments of a process RQ's pool built but has not started."""
    return process._args, process._kwargs


def pool_burst(pool: WorkerPool) -> bool:
    """Whether the pool runs in burst mode (ends once its queues are empty)."""
    return pool._burst


def set_pool_burst(pool: WorkerPool, burst: bool) -> None:
    """Set the pool's burst mode before its workers start, as RQ's ``start`` does."""
    pool._burst = burst


def pool_queue_names(pool: WorkerPool) -> list[str]:
    """The names of the queues the pool's workers serve."""
    return pool._queue_names


def install_pool_signal_handlers(pool: WorkerPool) -> None:
    """RQ's pool signal handlers (SIGINT, SIGTERM to ``request_stop``)."""
    pool._install_signal_handlers()
