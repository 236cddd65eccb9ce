"""What is running now, as plain JSON-able dicts for the dashboard: the running jobs with their
progress, every worker with its utilisation, and one job in full. Jobs are read with the JSON
serializer only; nothing here unpickles."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any, Optional

import redis
from rq import Queue
from rq.job import Job, JobStatus

from workqueue import control, statistics
from workqueue.errors import UnreadableJob
from workqueue.policy import SERIALIZER, UNREADABLE, fetch_job

log = logging.getLogger(__name__)

#: Statuses a job can still be stopped or cancelled in, and those it can be requeued from.
STOPPABLE = frozenset({JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED})
REQUEUEABLE = frozenset({JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED})


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _seconds_since(moment: Optional[datetime], now: datetime) -> Optional[float]:
    if moment is None:
        return None
    if moment.tzinfo is None:  # RQ stores naive UTC
        moment = moment.replace(tzinfo=timezone.utc)
    return round(max(0.0, (now - moment).total_seconds()), 1)


def _iso(moment: Optional[datetime]) -> Optional[str]:
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).isoformat(timespec="seconds")


def _fetch_many(connection: redis.Redis, ids: Iterable[str]) -> list[Job]:
    """The jobs that exist and read as JSON (in one round trip unless one does not; those are
    skipped, and logged)."""
    ids = list(ids)
    try:
        jobs = [job for job in Job.fetch_many(ids, connection=connection, serializer=SERIALIZER) if job is not None]
        if all(job.func_name and "unserialized" not in job.meta for job in jobs):  # reads each call
            return jobs
    except UNREADABLE:
        pass
    jobs = []
    for job_id in ids:
        try:
            job = fetch_job(connection, job_id)
        except UnreadableJob as exc:
            log.warning("%s", exc)
            continue
        if job is not None:
            jobs.append(job)
    return jobs


def running_jobs(connection: redis.Redis) -> list[dict[str, Any]]:
    """Every job in a started registry, longest-running first."""
    ids: list[str] = []
    for name in statistics.queue_names(connection):
        ids += Queue(name, connection=connection, serializer=SERIALIZER).started_job_registry.get_job_ids(cleanup=False)
    now = _now()
    jobs = _fetch_many(connection, ids)
    rows = [
        {
            "id": job.id,
            "task": job.meta.get("task", job.func_name),
            "queue": job.origin,
            "worker": job.worker_name,
            "description": job.description,
            "started_at": _iso(job.started_at),
            "elapsed": _seconds_since(job.started_at, now),
            "progress": job.meta.get("progress"),
        }
        for job in jobs
        if job.get_status(refresh=False) == JobStatus.STARTED
    ]
    return sorted(rows, key=lambda row: -(row["elapsed"] or 0))


def workers(connection: redis.Redis, running: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every live worker: busy or idle, its current job, its counts, and the share of its life
    spent working (its ended jobs' run time plus its running job's elapsed time, over its age)."""
    now = _now()
    elapsed = {job["worker"]: job["elapsed"] or 0.0 for job in running if job["worker"]}
    rows = []
    for worker in control.live_workers(connection):
        current = worker.get_current_job_id()
        age = _seconds_since(worker.birth_date, now) or 0.0
        working = worker.total_working_time + (elapsed.get(worker.name, 0.0) if current else 0.0)
        rows.append({
            "name": worker.name,
            "queues": worker.queue_names(),
            "state": "busy" if current else str(getattr(worker.get_state(), "value", worker.get_state())),
            "current_job": current,
            "finished": worker.successful_job_count,
            "failed": worker.failed_job_count,
            "age": age,
            "utilisation": round(min(1.0, working / age), 3) if age > 0 else 0.0,
            "last_heartbeat": _iso(worker.last_heartbeat),
        })
    return rows


def snapshot(connection: redis.Redis) -> dict[str, Any]:
    """The live-work page's data: running jobs and workers."""
    running = running_jobs(connection)
    return {"jobs": running, "workers": workers(connection, running)}


def job_detail(connection: redis.Redis, job_id: str) -> Optional[dict[str, Any]]:
    """One job in full (None if there is no such job), with what may be done to it; raises
    UnreadableJob for one that is not JSON."""
    job = fetch_job(connection, job_id)
    if job is None:
        return None
    status = job.get_status(refresh=False)
    latest = job.latest_result()
    now = _now()
    return {
        "id": job.id,
        "task": job.meta.get("task", job.func_name),
        "queue": job.origin,
        "status": status.value,
        "worker": job.worker_name,
        "batch": job.group_id,
        "description": job.description,
        "created_at": _iso(job.created_at),
        "enqueued_at": _iso(job.enqueued_at),
        "started_at": _iso(job.started_at),
        "ended_at": _iso(job.ended_at),
        "elapsed": _seconds_since(job.started_at, now) if status == JobStatus.STARTED else None,
        "progress": job.meta.get("progress"),
        "result": job.return_value(refresh=False) if status == JobStatus.FINISHED else None,
        "error": latest.exc_string if latest is not None and latest.exc_string else None,
        "attempts": job.meta.get("attempts", []),
        "meta": {k: v for k, v in job.meta.items() if k not in ("progress", "attempts")},
        "can_stop": status in STOPPABLE,
        "can_requeue": status in REQUEUEABLE,
    }
