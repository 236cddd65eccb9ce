"""One job as plain JSON-able data (status, progress, result, error, attempts, what may be done to
it), for the dashboard's job page and the gateway's job resource alike. Read as JSON only."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

import redis
from rq.job import JobStatus

from workqueue.policy import UNREADABLE, fetch_job

#: Statuses a job can still be stopped or cancelled in, and those it can be requeued from.
STOPPABLE = frozenset({JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED})
REQUEUEABLE = frozenset({JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED})


def now() -> datetime:
    return datetime.now(timezone.utc)


def seconds_since(moment: Optional[datetime], now: datetime) -> Optional[float]:
    if moment is None:
        return None
    if moment.tzinfo is None:  # RQ stores naive UTC
        moment = moment.replace(tzinfo=timezone.utc)
    return round(max(0.0, (now - moment).total_seconds()), 1)


def iso(moment: Optional[datetime]) -> Optional[str]:
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).isoformat(timespec="seconds")


def job_detail(connection: redis.Redis, job_id: str) -> Optional[dict[str, Any]]:
    """One job in full (None if there is no such job), with what may be done to it; raises
    UnreadableJob for one that is not JSON."""
    job = fetch_job(connection, job_id)
    if job is None:
        return None
    status = job.get_status(refresh=False)
    at = now()
    try:  # a result written by a foreign client (pickle) is reported, never unpickled
        latest = job.latest_result()
        result = job.return_value(refresh=False) if status == JobStatus.FINISHED else None
        error = latest.exc_string if latest is not None and latest.exc_string else None
    except UNREADABLE:
        result, error = None, "unreadable: the job's result is not JSON (not written by workqueue); left alone"
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
        "result": result,
        "error": error,
        "attempts": job.meta.get("attempts", []),
        "meta": {k: v for k, v in job.meta.items() if k not in ("progress", "attempts")},
        "can_stop": status in STOPPABLE,
        "can_requeue": status in REQUEUEABLE,
    }
