"""What is running now, as plain JSON-able dicts for the dashboard: the running jobs with their
progress and every worker with its utilisation. Jobs are read with the JSON serializer only;
nothing here unpickles."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import redis
from rq import Queue
from rq.job import Job, JobStatus

from workqueue import control, job_json, jobstats, pausing, priorities
from workqueue.errors import UnreadableJob
from workqueue.jobs import SERIALIZER, UNREADABLE, fetch_job
from workqueue.worker import autoscale

log = logging.getLogger(__name__)


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
    for name in jobstats.queue_names(connection):
        ids += Queue(name, connection=connection, serializer=SERIALIZER).started_job_registry.get_job_ids(cleanup=False)
    now = job_json.now()
    jobs = _fetch_many(connection, ids)
    rows = [
        {
            "id": job.id,
            "task": job.meta.get("task", job.func_name),
            "queue": job.origin,
            "worker": job.worker_name,
            "description": job.description,
            "started_at": job_json.iso(job.started_at),
            "elapsed": job_json.seconds_since(job.started_at, now),
            "progress": job.meta.get("progress"),
        }
        for job in jobs
        if job.get_status(refresh=False) == JobStatus.STARTED
    ]
    return sorted(rows, key=lambda row: -(row["elapsed"] or 0))


def workers(connection: redis.Redis, running: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every live worker: busy or idle, its current job, its slots in use (a worker running several
    jobs at once: "3/5"; else None), its counts, and the share of its life spent working (its ended
    jobs' run time plus its running job's elapsed time, over its age)."""
    now = job_json.now()
    elapsed = {job["worker"]: job["elapsed"] or 0.0 for job in running if job["worker"]}
    rows = []
    live = control.live_workers(connection)
    with connection.pipeline(transaction=False) as pipe:  # --concurrency: "used/N", written with its heartbeat
        for worker in live:
            pipe.hget(worker.key, "slots")
        slots = pipe.execute() if live else []
    for worker, used in zip(live, slots, strict=True):
        current = worker.get_current_job_id()
        age = job_json.seconds_since(worker.birth_date, now) or 0.0
        working = worker.total_working_time + (elapsed.get(worker.name, 0.0) if current else 0.0)
        rows.append(
            {
                "name": worker.name,
                "queues": worker.queue_names(),
                "state": "busy" if current else str(getattr(worker.get_state(), "value", worker.get_state())),
                "current_job": current,
                "finished": worker.successful_job_count,
                "failed": worker.failed_job_count,
                "age": age,
                "utilisation": round(min(1.0, working / age), 3) if age > 0 else 0.0,
                "last_heartbeat": job_json.iso(worker.last_heartbeat),
                "slots": used.decode() if used else None,
            }
        )
    return rows


def queues(connection: redis.Redis) -> list[dict[str, Any]]:
    """Every queue: paused or not, and its waiting jobs per priority level, highest first."""
    paused = pausing.paused_names(connection)
    names = sorted(set(jobstats.queue_names(connection)) | paused)
    counts = priorities.counts(connection, names)
    return [
        {
            "name": name,
            "paused": name in paused,
            "waiting": sum(counts[name].values()),
            "by_priority": [
                {"level": level, "name": priorities.name(level), "count": count}
                for level, count in counts[name].items()
            ],
        }
        for name in names
    ]


def snapshot(connection: redis.Redis) -> dict[str, Any]:
    """The live-work page's data: running jobs, workers, the queues' state, and the consumers' pools
    that autoscale."""
    running = running_jobs(connection)
    return {
        "jobs": running,
        "workers": workers(connection, running),
        "queues": queues(connection),
        "pools": autoscale.live_pools(connection),
    }
