"""One job as plain JSON-able data (status, progress, result, error, attempts, what may be done to
it), for the dashboard's job page and the gateway's job resource alike. Read as JSON only: a
result that is not JSON (pickle from a foreign client) is shown as ``None`` with a note in
``unreadable``, never unpickled and never an error."""

from __future__ import annotations

import zlib
from datetime import UTC, datetime
from typing import Any

import redis
from rq.job import Job, JobStatus
from rq.registry import ScheduledJobRegistry
from rq.results import Result

from workqueue import dependencies
from workqueue.jobs import fetch_job

#: Statuses a job can still be stopped or cancelled in, and those it can be requeued from.
STOPPABLE = frozenset({JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED})
REQUEUEABLE = frozenset({JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED})


def now() -> datetime:
    return datetime.now(UTC)


def seconds_since(moment: datetime | None, now: datetime) -> float | None:
    if moment is None:
        return None
    if moment.tzinfo is None:  # RQ stores naive UTC
        moment = moment.replace(tzinfo=UTC)
    return round(max(0.0, (now - moment).total_seconds()), 1)


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat(timespec="seconds")


def job_detail(connection: redis.Redis, job_id: str) -> dict[str, Any] | None:
    """One job in full (None if there is no such job), with what may be done to it; raises
    UnreadableJob for one that is not JSON."""
    job = fetch_job(connection, job_id)
    if job is None:
        return None
    status = job.get_status(refresh=False)
    latest, unreadable = _latest_result(job)
    at = now()
    return {
        "id": job.id,
        "task": job.meta.get("task", job.func_name),
        "queue": job.origin,
        "status": status.value,
        "worker": job.worker_name,
        "batch": job.group_id,
        "description": job.description,
        "created_at": iso(job.created_at),
        "enqueued_at": iso(job.enqueued_at),
        "started_at": iso(job.started_at),
        "ended_at": iso(job.ended_at),
        "elapsed": seconds_since(job.started_at, at) if status == JobStatus.STARTED else None,
        "progress": job.meta.get("progress"),
        "result": latest.return_value
        if latest is not None and latest.type == Result.Type.SUCCESSFUL and status == JobStatus.FINISHED
        else None,
        "unreadable": unreadable,
        "error": latest.exc_string if latest is not None and latest.exc_string else None,
        "attempts": job.meta.get("attempts", []),
        "meta": {k: v for k, v in job.meta.items() if k not in ("progress", "attempts")},
        "can_stop": status in STOPPABLE,
        "can_requeue": status in REQUEUEABLE,
        # when work runs (issue 15): when a scheduled job is due, what a deferred one waits for
        "scheduled_for": scheduled_for(connection, job) if status == JobStatus.SCHEDULED else None,
        "waiting_for": dependencies.waiting_for(connection, job),
    }


def scheduled_for(connection: redis.Redis, job: Job) -> str | None:
    """When a scheduled job is due (RQ's scheduled registry holds it as its score)."""
    score = connection.zscore(ScheduledJobRegistry(job.origin, connection=connection).key, job.id)
    return None if score is None else iso(datetime.fromtimestamp(score, UTC))


def _latest_result(job: Job) -> tuple[Result | None, str | None]:
    """The job's latest result, or None and why it cannot be read (RQ decodes it with the job's
    serializer: a result written as pickle is not JSON, and is left alone)."""
    try:
        return job.latest_result(), None
    except (ValueError, TypeError, KeyError, zlib.error) as exc:
        return None, (
            f"the result is not JSON ({type(exc).__name__}): it was not written by workqueue, and is left alone"
        )
