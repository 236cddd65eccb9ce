"""Handing back the job of a worker that stopped without finishing it.

Used by a worker stopped at once (``kill_workers --now``, a second Ctrl-C) and by the sweep that
finds workers whose heartbeat has expired (SIGKILL, OOM, a lost machine): the job goes back to the
front of its queue, or, if its task is not safe to re-run, to the failed registry with the reason.
Nothing is left "started" with no one running it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timezone

import redis
from rq import Queue, Worker
from rq.job import Job, JobStatus
from rq.scheduler import RQScheduler
from rq.utils import current_timestamp
from rq.worker_registration import clean_worker_registry

import task_def
from workqueue import batches, statistics
from workqueue.policy import SERIALIZER, CatalogueJob

log = logging.getLogger(__name__)

REQUEUED, FAILED, ALREADY_ENDED = "requeued", "failed", "already ended"

# Move a job id from the intermediate list back to the front of its queue, unless a worker took it
# out first (it registered the job meanwhile): atomic, so a job is neither lost nor doubled.
_REQUEUE_IF_STILL_THERE = """
if redis.call('HGET', KEYS[3], 'status') == 'queued' and redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('LPUSH', KEYS[2], ARGV[1])
  redis.call('HSET', KEYS[3], 'status', 'queued')
  redis.call('DEL', KEYS[4])
  return 1
end
return 0
"""


@dataclass(frozen=True)
class HandBack:
    job_id: str
    queue: str
    outcome: str
    reason: str

    def describe(self) -> str:
        if self.outcome == REQUEUED:
            return f"job {self.job_id} put back at the front of {self.queue}"
        if self.outcome == FAILED:
            return f"job {self.job_id} failed: {self.reason} (not re-run)"
        return f"job {self.job_id} had already ended"


def hand_back(connection: redis.Redis, job: Job, reason: str, worker_name: str = "", *, attempt: bool = False) -> HandBack:
    """Requeue ``job`` at the front of its queue, or fail it with ``reason`` if it must not re-run.

    ``attempt``: the interruption was a failure (the worker died), so it uses one of the job's
    retries; a deliberate stop does not.
    """
    job = CatalogueJob.fetch(job.id, connection=connection, serializer=SERIALIZER)
    queue = Queue(job.origin, connection=connection, serializer=SERIALIZER, job_class=CatalogueJob)
    if job.get_status(refresh=False) != JobStatus.STARTED:
        return HandBack(job.id, queue.name, ALREADY_ENDED, reason)
    task = task_def.by_path(job.func_name)
    rerun = task is None or task.rerun_safe  # a foreign job is refused again, harmlessly
    why_not = f"task {task.name if task else job.func_name} is not safe to re-run"
    if rerun and attempt:
        if job.retries_left:
            job.retries_left -= 1
        else:
            rerun, why_not = False, "no retries left"
    executions = job.get_executions()
    job.meta.setdefault("interruptions", []).append(
        {"reason": reason, "worker": worker_name, "at": datetime.now(timezone.utc).isoformat()}
    )
    failure = f"{reason}; not re-run: {why_not}"
    if attempt or not rerun:
        note_attempt(job, reason if rerun else failure, worker_name)
    with connection.pipeline() as pipe:
        for execution in executions:
            execution.delete(job, pipeline=pipe)
        job.started_job_registry.remove_executions(job, pipeline=pipe)
        pipe.hset(job.key, "meta", job.serializer.dumps(job.meta))
        if rerun:
            if job.retries_left is not None:
                pipe.hset(job.key, "retries_left", job.retries_left)
            queue._enqueue_job(job, pipeline=pipe, at_front=True)
        else:
            job.set_status(JobStatus.FAILED, pipeline=pipe)
            job._handle_failure(failure, pipe, worker_name)
        pipe.execute()
    if not rerun:
        batches.job_ended(connection, job, "failed", detail=failure)
    outcome = HandBack(job.id, queue.name, REQUEUED if rerun else FAILED, reason)
    log.warning("%s (%s)", outcome.describe(), reason)
    return outcome


def note_attempt(job: Job, error: str, worker_name: str) -> None:
    """Add a failed attempt (its error's last lines, where and when) to ``job.meta``; the caller saves.

    RQ keeps only the last failure's result; this keeps every attempt's.
    """
    lines = [line for line in (error or "").strip().splitlines() if line.strip()]
    job.meta.setdefault("attempts", []).append(
        {"error": "\n".join(lines[-3:])[:2000], "worker": worker_name, "at": datetime.now(timezone.utc).isoformat()}
    )


def sweep(connection: redis.Redis) -> tuple[list[str], list[HandBack]]:
    """Unregister workers whose heartbeat expired and hand back the jobs no live worker is running.

    Returns the names of the ghosts removed and what became of their jobs.
    """
    keys = sorted(k.decode() for k in connection.smembers(Worker.redis_workers_keys))
    with connection.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.exists(key)
        exists = pipe.execute()
    missing = [key for key, there in zip(keys, exists) if not there]
    queues = Queue.all(connection=connection, serializer=SERIALIZER, job_class=CatalogueJob)
    if missing:
        for queue in queues:
            clean_worker_registry(queue)
        connection.srem(Worker.redis_workers_keys, *missing)
    prefix = Worker.redis_worker_namespace_prefix
    handed: list[HandBack] = []
    for queue in queues:
        ids = queue.started_job_registry.get_job_ids(cleanup=False)
        for job in Job.fetch_many(ids, connection=connection, serializer=SERIALIZER):
            if job is None or job.get_status(refresh=False) != JobStatus.STARTED:
                continue
            owner = job.worker_name or ""
            # A worker's hash outlives it by a minute when it quits (RQ's register_death marks it
            # "death"): such a worker is as dead as one whose heartbeat lapsed.
            quit_ = bool(owner) and bool(connection.hexists(prefix + owner, "death"))
            if owner and connection.exists(prefix + owner) and not quit_:
                continue
            reason = f"worker {owner} quit without finishing it" if quit_ else \
                f"worker {owner or '?'} died (its heartbeat expired)"
            handed.append(hand_back(connection, job, reason, owner, attempt=True))
        handed += _rescue_intermediate(connection, queue)
    _enqueue_due(connection, queues)
    return [key[len(prefix):] for key in missing], handed


def _rescue_intermediate(connection: redis.Redis, queue: Queue) -> list[HandBack]:
    """Requeue jobs a worker moved out of the queue but never started (it died in between).

    Such a job is still "queued", in the queue's intermediate list, and perhaps already in the
    started registry (RQ registers the execution before forking the horse that starts it). It is
    rescued on the second sweep that finds it so, at least a sweep interval after the first: long
    enough for a live worker to have started it.
    """
    rescued = []
    job_ids = [j.decode() for j in connection.lrange(queue.intermediate_queue_key, 0, -1)]
    for job_id, job in zip(job_ids, Job.fetch_many(job_ids, connection=connection, serializer=SERIALIZER)):
        if job is not None and job.get_status(refresh=False) != JobStatus.QUEUED:
            continue  # started (the started-registry scan covers it) or already ended
        seen_key = f"workqueue:intermediate-seen:{queue.name}:{job_id}"
        if connection.set(seen_key, 1, nx=True, ex=600):
            continue  # first sighting
        if job is None:
            connection.lrem(queue.intermediate_queue_key, 1, job_id)
            continue
        keys = [queue.intermediate_queue_key, queue.key, job.key, seen_key]
        if connection.eval(_REQUEUE_IF_STILL_THERE, len(keys), *keys, job_id):
            with connection.pipeline() as pipe:
                for execution in job.get_executions():
                    execution.delete(job, pipeline=pipe)
                pipe.execute()
            log.warning("job %s was dequeued by a worker that died before starting it; requeued", job_id)
            rescued.append(HandBack(job_id, queue.name, REQUEUED, "dequeued by a worker that died before starting it"))
    return rescued


def _enqueue_due(connection: redis.Redis, queues: list[Queue]) -> None:
    """Move due scheduled jobs (retries waiting out their backoff) of queues no scheduler holds.

    RQ's scheduler runs in one worker per queue; when that worker stops, nobody schedules until
    another worker starts. This does what RQ's burst-mode scheduler does, under RQ's own lock.
    """
    now = current_timestamp()
    idle = [q.name for q in queues if q.scheduled_job_registry.get_jobs_to_schedule(now, chunk_size=1)]
    if not idle:
        return
    scheduler = RQScheduler(idle, connection=connection, serializer=SERIALIZER)
    if scheduler.acquire_locks():
        try:
            scheduler.enqueue_scheduled_jobs()
        finally:
            scheduler.release_locks()

def start_sweeper(connection: redis.Redis, interval: float, stop: threading.Event) -> threading.Thread:
    """Run :func:`sweep` (and sample the queues' backlog) every ``interval`` seconds in a daemon
    thread until ``stop`` is set."""

    def loop() -> None:
        while not stop.wait(interval):
            try:
                sweep(connection)
                statistics.sample_backlog(connection)
            except redis.RedisError as exc:
                log.warning("sweep for dead workers failed: %s", exc)

    thread = threading.Thread(target=loop, name="workqueue-sweeper", daemon=True)
    thread.start()
    return thread
