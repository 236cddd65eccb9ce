"""Stopping workers and jobs through Redis (RQ's pub/sub commands and registries), never by local
PID, so it works on a worker on any machine that shares the Redis. Used by ``kill_thread/`` and
the dashboard alike."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import Enum

import redis
from rq import Worker
from rq.command import send_command, send_stop_job_command
from rq.exceptions import InvalidJobOperation
from rq.job import Job, JobStatus
from rq.registry import CanceledJobRegistry, FailedJobRegistry
from rq.worker import BaseWorker

from workqueue import backlog, batches, dependencies, limits, priorities, recovery
from workqueue.errors import BadInput, UnreadableJob
from workqueue.jobs import SERIALIZER, CatalogueJob, check_queue_name, fetch_job

#: The pub/sub command for a stop at once that hands the running job back (RQ's own: "shutdown").
SHUTDOWN_NOW = "shutdown-now"


def live_workers(connection: redis.Redis) -> list[BaseWorker]:
    """Every registered worker whose registration has not lapsed, sorted by name."""
    return sorted(Worker.all(connection=connection, serializer=SERIALIZER), key=lambda w: w.name)


def select_workers(
    connection: redis.Redis,
    *,
    every: bool = False,
    queue: str | None = None,
    name: str | None = None,
    host: str | None = None,
) -> list[BaseWorker]:
    """The workers a kill command means; BadInput (naming what exists) when it means none.
    ``host``: the workers registered from that host name (a machine, or a Kubernetes pod draining)."""
    if sum((every, queue is not None, name is not None, host is not None)) != 1:
        raise BadInput("choose exactly one of --all, --queue NAME, --worker NAME, --host NAME")
    if host is not None:
        return _workers_of_host(live_workers(connection), host)
    workers = live_workers(connection)
    existing = ", ".join(w.name for w in workers) or "none"
    if every:
        chosen = workers
        if not chosen:
            raise BadInput("no workers are running")
    elif queue is not None:
        check_queue_name(queue)
        chosen = [w for w in workers if queue in w.queue_names()]
        if not chosen:
            queues = sorted({q for w in workers for q in w.queue_names()})
            raise BadInput(f"no worker listens on queue {queue!r}; queues with workers: {', '.join(queues) or 'none'}")
    else:
        chosen = [w for w in workers if w.name == name]
        if not chosen:
            raise BadInput(f"no worker named {name!r}; running workers: {existing}")
    return chosen


def _workers_of_host(workers: list[BaseWorker], host: str) -> list[BaseWorker]:
    chosen = [w for w in workers if w.hostname == host]
    if not chosen:
        hosts = sorted({w.hostname or "?" for w in workers})
        raise BadInput(f"no worker runs on host {host!r}; hosts with workers: {', '.join(hosts) or 'none'}")
    return chosen


@dataclass
class StopRequest:
    worker: str
    job_id: str | None


def request_worker_stop(
    connection: redis.Redis, workers: Iterable[BaseWorker], *, now: bool, by: str
) -> list[StopRequest]:
    """Ask each worker to stop: after its current job (default) or at once, handing its job back."""
    requests = []
    for worker in workers:
        requests.append(StopRequest(worker.name, worker.get_current_job_id()))
        send_command(connection, worker.name, SHUTDOWN_NOW if now else "shutdown", by=by)
    return requests


def wait_gone(connection: redis.Redis, names: Iterable[str], timeout: float) -> Iterator[tuple[str, bool]]:
    """Yield (name, True) as each worker leaves the registry, then (name, False) for those left at ``timeout``."""
    pending = set(names)
    deadline = time.monotonic() + timeout
    while pending:
        with connection.pipeline(transaction=False) as pipe:
            for name in sorted(pending):
                pipe.hexists(Worker.redis_worker_namespace_prefix + name, "death")
                pipe.exists(Worker.redis_worker_namespace_prefix + name)
            replies = pipe.execute()
        for name, dead, exists in zip(sorted(pending), replies[::2], replies[1::2], strict=True):
            if dead or not exists:
                pending.discard(name)
                yield name, True
        if pending and time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for name in sorted(pending):
        yield name, False


def job_outcome(connection: redis.Redis, job_id: str, worker: str) -> str:
    """Where the job a worker was running ended up after it was stopped at once, in words."""
    try:
        job = fetch_job(connection, job_id)
    except UnreadableJob as exc:
        return str(exc)
    if job is None:
        return f"job {job_id} no longer exists"
    status = job.get_status(refresh=False)
    handed_back = any(i.get("worker") == worker for i in job.meta.get("interruptions", []))
    if handed_back:
        where = f"put back at the front of {job.origin}"
        if status != JobStatus.QUEUED:
            where += f" (since {status.value}" + (f" on {job.worker_name})" if job.worker_name else ")")
        return f"job {job_id} {where}"
    if status == JobStatus.FAILED:
        return f"job {job_id} failed: {_last_error(job)}"
    return f"job {job_id} is {status.value}"


def _last_error(job: Job) -> str:
    result = job.latest_result()
    lines = (result.exc_string or "").strip().splitlines() if result is not None else []
    return lines[-1] if lines else "no reason recorded"


class Outcome(str, Enum):
    """What an action on one job came to: callers choose exit codes and HTTP statuses from it."""

    DONE = "done"  # stopped, cancelled, requeued or deleted
    NOTHING_TO_DO = "nothing to do"  # already ended, or not in a state the action applies to
    STILL_RUNNING = "still running"  # asked to stop, still running when the wait ran out
    NOT_FOUND = "not found"
    UNREADABLE = "unreadable"  # not JSON (a foreign client's): reported and left alone


@dataclass
class JobStop:
    job_id: str
    outcome: Outcome
    message: str

    @property
    def found(self) -> bool:
        return self.outcome is not Outcome.NOT_FOUND

    @property
    def failed(self) -> bool:
        """Whether the action did not do what was asked (a command exits 1 for it)."""
        return self.outcome in (Outcome.NOT_FOUND, Outcome.UNREADABLE, Outcome.STILL_RUNNING)


def _unreadable(job_id: str, exc: UnreadableJob) -> JobStop:
    """What an action reports for a job it cannot read: left alone, and the others go on."""
    return JobStop(job_id, Outcome.UNREADABLE, str(exc))


def stop_job(connection: redis.Redis, job_id: str, *, by: str, timeout: float = 10.0) -> JobStop:
    """Stop a running job (RQ's stop-job command) or cancel a queued, scheduled or deferred one;
    a job that is not JSON is reported and left alone."""
    try:
        job = fetch_job(connection, job_id)
    except UnreadableJob as exc:
        return _unreadable(job_id, exc)
    if job is None:
        return JobStop(job_id, Outcome.NOT_FOUND, f"no such job: {job_id}")
    status = job.get_status(refresh=False)
    if status == JobStatus.STARTED:
        job.meta["stopped_by"] = by
        job.save_meta()
        send_stop_job_command(connection, job_id, serializer=SERIALIZER)
        deadline = time.monotonic() + timeout
        while job.get_status(refresh=True) == JobStatus.STARTED and time.monotonic() < deadline:
            time.sleep(0.1)
        status = job.get_status(refresh=False)
        if status == JobStatus.STARTED:
            return JobStop(
                job_id,
                Outcome.STILL_RUNNING,
                f"job {job_id} was asked to stop but is still running after {timeout:g} s",
            )
        return JobStop(
            job_id, Outcome.DONE, f"job {job_id} stopped ({status.value}, in the failed registry of {job.origin})"
        )
    if status in (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED):
        job.meta["cancelled_by"] = by
        job.save_meta()
        job.cancel()
        limits.forget_held(connection, job)  # a job held by a per-key limit waits off the queue
        batches.job_ended(connection, job, "failed", detail=f"cancelled by {by}")
        dependencies.settle_safely(connection, job_id)  # what waited for it: cancelled too, or run (after any)
        return JobStop(
            job_id,
            Outcome.DONE,
            f"job {job_id} cancelled (was {status.value}; now in the canceled registry of {job.origin})",
        )
    return JobStop(job_id, Outcome.NOTHING_TO_DO, f"job {job_id} had already ended ({status.value}); nothing to do")


def stop_batch(connection: redis.Redis, batch_id: str, *, by: str, timeout: float = 10.0) -> list[JobStop]:
    """Cancel a batch's queued tasks and stop its running ones; BadInput for an unknown batch."""
    try:
        batches.summary(connection, batch_id)
    except KeyError:
        raise BadInput(f"no such batch: {batch_id}") from None
    # Cancel the waiting ones first, so stopping a running one does not hand its worker the next.
    order = sorted(batches.job_statuses(connection, batch_id), key=lambda pair: pair[1] == JobStatus.STARTED.value)
    return [stop_job(connection, job_id, by=by, timeout=timeout) for job_id, _ in order]


def clean(connection: redis.Redis) -> tuple[list[str], list[recovery.HandBack]]:
    """Remove registrations of dead workers and hand back their jobs (see ``recovery.sweep``)."""
    return recovery.sweep(connection)


def requeue(connection: redis.Redis, job_id: str, *, by: str) -> JobStop:
    """Put a failed or cancelled job back on its queue (at the back), as a fresh attempt; a job
    that is not JSON is reported and left alone."""
    try:
        job = fetch_job(connection, job_id)
    except UnreadableJob as exc:
        return _unreadable(job_id, exc)
    if job is None:
        return JobStop(job_id, Outcome.NOT_FOUND, f"no such job: {job_id}")
    status = job.get_status(refresh=False)
    registries = {
        JobStatus.FAILED: job.failed_job_registry,
        JobStatus.STOPPED: job.failed_job_registry,
        JobStatus.CANCELED: CanceledJobRegistry(
            job.origin, connection=connection, serializer=SERIALIZER, job_class=CatalogueJob
        ),
    }
    if status not in registries:
        return JobStop(
            job_id,
            Outcome.NOTHING_TO_DO,
            f"job {job_id} is {status.value}; only failed or cancelled jobs can be requeued",
        )
    job.meta.setdefault("requeued_by", []).append(by)
    job.save_meta()
    backlog.add(connection, job.origin, [job.id])  # before it can run (and end)
    try:
        registries[status].requeue(job)
    except InvalidJobOperation:
        backlog.forget(connection, job)
        return JobStop(
            job_id, Outcome.NOTHING_TO_DO, f"job {job_id} is no longer in the {status.value} registry of {job.origin}"
        )
    return JobStop(job_id, Outcome.DONE, f"job {job_id} requeued on {job.origin}")


def requeue_failed(connection: redis.Redis, queue: str, *, by: str) -> list[JobStop]:
    """Requeue every job in a queue's failed registry."""
    check_queue_name(queue)
    registry = FailedJobRegistry(queue, connection=connection, serializer=SERIALIZER, job_class=CatalogueJob)
    return each_job(registry.get_job_ids(cleanup=False), lambda job_id: requeue(connection, job_id, by=by))


def cancel_queued(connection: redis.Redis, queue: str, *, by: str) -> list[JobStop]:
    """Cancel every job waiting on a queue (see :func:`stop_job`); running ones are left alone."""
    check_queue_name(queue)
    waiting = priorities.waiting_ids(connection, queue)  # every priority level
    waiting += limits.held_ids(connection, f"rq:queue:{queue}")  # and those a per-key limit holds
    return each_job(waiting, lambda job_id: stop_job(connection, job_id, by=by))


def each_job(job_ids: Iterable[str], act: Callable[[str], JobStop]) -> list[JobStop]:
    """``act`` on each job in turn; one that is not JSON is reported and left alone, and never
    stops the action on the others."""
    stops = []
    for job_id in job_ids:
        try:
            stops.append(act(job_id))
        except UnreadableJob as exc:
            stops.append(_unreadable(job_id, exc))
    return stops


def delete_job(connection: redis.Redis, job_id: str) -> JobStop:
    """Delete a job that is not running, with its results; a running job must be stopped first."""
    job = fetch_job(connection, job_id)
    if job is None:
        return JobStop(job_id, Outcome.NOT_FOUND, f"no such job: {job_id}")
    if job.get_status(refresh=False) == JobStatus.STARTED:
        return JobStop(job_id, Outcome.NOTHING_TO_DO, f"job {job_id} is running; stop it before deleting it")
    job.delete()
    backlog.forget(connection, job)
    return JobStop(job_id, Outcome.DONE, f"job {job_id} deleted")
