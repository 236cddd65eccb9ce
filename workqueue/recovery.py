"""Handing back the job of a worker that stopped without finishing it.

Used by a worker stopped at once (``kill_workers --now``, a second Ctrl-C) and by the sweep that
finds workers whose heartbeat has expired (SIGKILL, OOM, a lost machine): the job goes back to the
front of its queue, or, if its task is not safe to re-run, to the failed registry with the reason.
Nothing is left "started" with no one running it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import redis
from rq import Queue, Worker
from rq.defaults import RQ_KEY_PREFIX
from rq.executions import WORKER_EXECUTIONS_KEY_TEMPLATE, ExecutionRegistry
from rq.job import Job, JobStatus
from rq.results import Result
from rq.scheduler import RQScheduler
from rq.utils import current_timestamp, now, utcformat, utcparse
from rq.worker_registration import clean_worker_registry

import task_def
from workqueue import batches, dependencies, jobstats, limits, lua, priorities, rq_compat
from workqueue.errors import UnreadableJob
from workqueue.guarded import SUPERSEDED, Guard, run_guarded
from workqueue.jobs import SERIALIZER, CatalogueJob, fetch_job
from workqueue.replies import decoded, decoded_members
from workqueue.settings import FAILURE_TTL, LIMIT_DEAD_GRACE

log = logging.getLogger(__name__)

REQUEUED, FAILED, ALREADY_ENDED = "requeued", "failed", "already ended"

#: Why a dead run's job that is not JSON is failed instead of handed back.
UNREADABLE_REASON = "unreadable job: its data is not JSON (not written by workqueue); never run"

# Move a job id from the intermediate list back to the front of its queue, unless a worker took it
# out first (it registered the job meanwhile): atomic, so a job is neither lost nor doubled.
_REQUEUE_IF_STILL_THERE = lua.script("bell") + lua.script("requeue_if_still_there")  # it rings (bells.py)


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


def hand_back(
    connection: redis.Redis,
    job_or_id: Job | str,
    reason: str,
    worker_name: str = "",
    *,
    attempt: bool = False,
    execution_ids: Iterable[str] | None = None,
) -> HandBack:
    """Requeue ``job`` at the front of its queue, or fail it with ``reason`` if it must not re-run.

    ``attempt``: the interruption was a failure (the worker died), so it uses one of the job's
    retries; a deliberate stop does not. ``execution_ids``: the runs found dead (default: every
    run the job has). One atomic step (``guarded.run_guarded``, mode 'claim'): only the caller
    whose removal of such a run from the started registry succeeds hands the job back, so of
    several sweeps that find the same dead run, one acts and the others find it "already ended".
    A job that is not JSON is failed with the reason, never run.
    """
    job_id = job_or_id if isinstance(job_or_id, str) else job_or_id.id
    job_key = Job.key_for(job_id)
    origin = decoded(connection.hget(job_key, "origin") or b"")
    if execution_ids is None:
        execution_ids = decoded_members(connection.zrange(ExecutionRegistry.key_template.format(job_id), 0, -1))
    execution_ids = list(execution_ids)
    if not origin or not execution_ids:
        return HandBack(job_id, origin, ALREADY_ENDED, reason)
    queue = Queue(origin, connection=connection, serializer=SERIALIZER, job_class=CatalogueJob)
    guard = Guard("claim", queue.started_job_registry.key, [f"{job_id}:{e}" for e in execution_ids])
    try:
        job = fetch_job(connection, job_id)
    except UnreadableJob:
        return _fail_unreadable(connection, queue, job_id, execution_ids, guard, worker_name)
    if job is None:
        return HandBack(job_id, origin, ALREADY_ENDED, reason)
    rerun, failure = _decide(job, reason, worker_name, attempt)

    def build(pipe: redis.client.Pipeline) -> None:
        _queue_hand_back(pipe, job, queue, execution_ids, worker_name, rerun, failure)

    if run_guarded(connection, build, guard, what=f"the hand-back of job {job_id}", patience=30) is SUPERSEDED:
        return HandBack(job_id, queue.name, ALREADY_ENDED, reason)
    outcome = HandBack(job.id, queue.name, REQUEUED if rerun else FAILED, reason)
    log.warning("%s (%s)", outcome.describe(), reason)
    if not rerun:  # its end: what waits for it is cancelled, or run if it runs whatever the outcome
        dependencies.settle_safely(connection, job.id)
    return outcome


def give_back(connection: redis.Redis, job: Job, queue: Queue, execution_id: str, worker_name: str) -> bool:
    """Put a job a worker claimed ahead (``worker.claiming``) and never ran back at the front of
    its queue, as it was: no retry used, no interruption noted. Guarded as :func:`hand_back` (mode
    'claim'): False if its run was no longer in the started registry (a sweep took it first)."""
    guard = Guard("claim", queue.started_job_registry.key, [f"{job.id}:{execution_id}"])
    job.started_at = job.last_heartbeat = None
    job.worker_name = None

    def build(pipe: redis.client.Pipeline) -> None:
        _forget_executions(pipe, job.id, [execution_id], queue, worker_name, grace=0.0)
        rq_compat.enqueue_job(queue, job, pipeline=pipe, at_front=True)

    replies = run_guarded(connection, build, guard, what=f"the return of job {job.id}", patience=30)
    return replies is not SUPERSEDED


def _decide(job: Job, reason: str, worker_name: str, attempt: bool) -> tuple[bool, str]:
    """Whether ``job`` runs again (an ``attempt`` uses one of its retries), and the failure to
    record if not; notes the interruption in its meta (not yet written)."""
    task = task_def.by_path(job.func_name)
    rerun = task is None or task.rerun_safe  # a foreign job is refused again, harmlessly
    why_not = f"task {task.name if task else job.func_name} is not safe to re-run"
    if rerun and attempt:
        if job.retries_left:
            job.retries_left -= 1
        else:
            rerun, why_not = False, "no retries left"
    job.meta.setdefault("interruptions", []).append(
        {"reason": reason, "worker": worker_name, "at": datetime.now(UTC).isoformat()}
    )
    failure = f"{reason}; not re-run: {why_not}"
    if attempt or not rerun:
        note_attempt(job, reason if rerun else failure, worker_name)
    return rerun, failure


def _queue_hand_back(
    pipe: redis.client.Pipeline,
    job: Job,
    queue: Queue,
    execution_ids: list[str],
    worker_name: str,
    rerun: bool,
    failure: str,
) -> None:
    """Queue the hand-back's writes on ``pipe``: the dead runs forgotten, then ``job`` requeued at
    the front or failed with ``failure``."""
    _forget_executions(pipe, job.id, execution_ids, queue, worker_name)
    pipe.hset(job.key, "meta", job.serializer.dumps(job.meta))
    if rerun:
        if job.retries_left is not None:
            pipe.hset(job.key, "retries_left", job.retries_left)
        rq_compat.enqueue_job(queue, job, pipeline=pipe, at_front=True)
    else:
        job.set_status(JobStatus.FAILED, pipeline=pipe)
        rq_compat.handle_job_failure(job, failure, pipe, worker_name)
        batches.record_end(pipe, job, "failed", detail=failure)


def _forget_executions(
    pipe: redis.client.Pipeline,
    job_id: str,
    execution_ids: list[str],
    queue: Queue,
    worker_name: str,
    grace: float = LIMIT_DEAD_GRACE,
) -> None:
    """Queue what RQ's Execution.delete writes for each of the job's runs, without reading them
    first (a concurrent sweep may have deleted them: RQ's get_executions then raises); a per-key
    limit's lease ends ``grace`` seconds from now."""
    for execution_id in execution_ids:
        composite = f"{job_id}:{execution_id}"
        pipe.delete(f"{RQ_KEY_PREFIX}:execution:{composite}")
        pipe.zrem(queue.started_job_registry.key, composite)
        pipe.zrem(ExecutionRegistry.key_template.format(job_id), execution_id)
        # Its concurrency slot comes back shortly: the site may still be answering the dead run's request.
        limits.queue_release(pipe, Job.key_for(job_id), job_id, execution_id, queue_key=queue.key, grace=grace)
        if worker_name:
            pipe.srem(WORKER_EXECUTIONS_KEY_TEMPLATE.format(worker_name), composite)


def _fail_unreadable(
    connection: redis.Redis, queue: Queue, job_id: str, execution_ids: list[str], guard: Guard, worker_name: str
) -> HandBack:
    """Fail a dead run's job whose data or meta is not JSON (garbage, or a foreign client's
    pickle), with the reason, its meta left as it is: never run, never counted finished."""
    raw = connection.hgetall(Job.key_for(job_id))
    job = CatalogueJob(job_id, connection=connection, serializer=SERIALIZER)
    try:
        job.restore(raw)
    except Exception:  # not even RQ's fields: the bare minimum to fail it
        job.origin = queue.name
    job.failure_ttl = job.failure_ttl or FAILURE_TTL

    def build(pipe: redis.client.Pipeline) -> None:
        _forget_executions(pipe, job_id, execution_ids, queue, worker_name)
        job.failed_job_registry.add(job, ttl=job.failure_ttl, exc_string=UNREADABLE_REASON, pipeline=pipe)
        pipe.hset(job.key, mapping={"status": JobStatus.FAILED.value, "ended_at": utcformat(now())})
        Result.create_failure(
            job, job.failure_ttl, exc_string=UNREADABLE_REASON, worker_name=worker_name, pipeline=pipe
        )
        batches.record_end(pipe, job, "failed", detail=UNREADABLE_REASON, task="?")

    if run_guarded(connection, build, guard, what=f"the failure of job {job_id}", patience=30) is SUPERSEDED:
        return HandBack(job_id, queue.name, ALREADY_ENDED, UNREADABLE_REASON)
    log.warning("job %s failed: %s (its worker %s is gone)", job_id, UNREADABLE_REASON, worker_name or "?")
    return HandBack(job_id, queue.name, FAILED, UNREADABLE_REASON)


def note_attempt(job: Job, error: str, worker_name: str) -> None:
    """Add a failed attempt (its error's last lines, where and when) to ``job.meta``; the caller saves.

    RQ keeps only the last failure's result; this keeps every attempt's.
    """
    lines = [line for line in (error or "").strip().splitlines() if line.strip()]
    job.meta.setdefault("attempts", []).append(
        {"error": "\n".join(lines[-3:])[:2000], "worker": worker_name, "at": datetime.now(UTC).isoformat()}
    )


def sweep(connection: redis.Redis) -> tuple[list[str], list[HandBack]]:
    """Unregister dead workers and hand back the jobs no live worker is running.

    A worker is dead when its registration lapsed (its heartbeat stopped: SIGKILL, a lost
    machine), when it quit (RQ marks its hash "death"), or at once when it was registered from this
    host and its process is gone (:func:`local_worker_gone`). Each job is handled on its own: one
    that cannot be handed back (not JSON, or Redis refusing it) is logged and the sweep goes on.
    Returns the names of the dead workers removed and what became of their jobs.
    """
    prefix = Worker.redis_worker_namespace_prefix
    keys = sorted(decoded(k, errors="replace") for k in connection.smembers(Worker.redis_workers_keys))
    keys = [key for key in keys if "\ufffd" not in key]  # not UTF-8: no worker of ours or RQ's
    with connection.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hmget(key, "hostname", "pid", "birth", "death")
        fields = pipe.execute()
    missing, gone_here = [], []
    for key, (host, pid, birth, death) in zip(keys, fields, strict=True):
        if host is None and pid is None and birth is None:
            missing.append(key)
        elif death is None and local_worker_gone(host, pid, birth):
            gone_here.append(key)
    if gone_here:  # as if its registration had lapsed
        connection.delete(*gone_here)
    dead = missing + gone_here
    queues = [
        Queue(name, connection=connection, serializer=SERIALIZER, job_class=CatalogueJob)
        for name in jobstats.rq_queue_names(connection)
    ]
    if dead:
        for queue in queues:
            clean_worker_registry(queue)
        connection.srem(Worker.redis_workers_keys, *dead)
    handed: list[HandBack] = []
    for queue in queues:
        try:
            handed += _sweep_started(connection, queue)
            handed += _rescue_intermediate(connection, queue)
        except redis.ConnectionError:
            raise
        except Exception:  # one queue's trouble never stops the others'
            log.exception("sweeping queue %s failed; carrying on", queue.name)
    _enqueue_due(connection, queues)
    return [key[len(prefix) :] for key in dead], handed


def _sweep_started(connection: redis.Redis, queue: Queue) -> list[HandBack]:
    """Hand back each job of ``queue``'s started registry whose worker is dead, one by one."""
    prefix = Worker.redis_worker_namespace_prefix
    members = decoded_members(connection.zrange(queue.started_job_registry.key, 0, -1))
    runs: dict[str, list[str]] = {}
    for member in members:
        job_id, _, execution_id = member.rpartition(":")
        if job_id:
            runs.setdefault(job_id, []).append(execution_id)
    job_ids = sorted(runs)
    with connection.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hmget(Job.key_for(job_id), "status", "worker_name")
        states = pipe.execute()
    owners = sorted({w.decode() for _, w in states if w})
    with connection.pipeline(transaction=False) as pipe:
        for owner in owners:
            pipe.exists(prefix + owner)
            pipe.hexists(prefix + owner, "death")
        replies = pipe.execute()
    alive = {
        owner for owner, there, quit_ in zip(owners, replies[::2], replies[1::2], strict=True) if there and not quit_
    }
    quitted = {owner for owner, there, quit_ in zip(owners, replies[::2], replies[1::2], strict=True) if quit_}
    handed = []
    for job_id, (status, owner_raw) in zip(job_ids, states, strict=True):
        owner = owner_raw.decode() if owner_raw else ""
        if status != JobStatus.STARTED.value.encode() or owner in alive:
            continue  # a job just ended (its registry entry follows in the same step) or still running
        # A worker's hash outlives it by a minute when it quits (RQ's register_death marks it
        # "death"): such a worker is as dead as one whose heartbeat lapsed.
        reason = (
            f"worker {owner} quit without finishing it"
            if owner in quitted
            else f"worker {owner or '?'} died (its heartbeat expired)"
        )
        try:
            handed.append(hand_back(connection, job_id, reason, owner, attempt=True, execution_ids=runs[job_id]))
        except redis.ConnectionError:
            raise
        except Exception:  # logged; the next sweep tries again, the other jobs go on
            log.exception("could not hand back job %s of dead worker %s; carrying on", job_id, owner or "?")
    return handed


def local_worker_gone(hostname: bytes | None, pid: bytes | None, birth: bytes | None) -> bool:
    """Whether a worker registered from this host (RQ keeps its hostname and pid) no longer runs:
    its process is gone, or the pid now belongs to a process started after the worker's birth
    (the pid was reused). A worker of another host is left to its registration's lapse."""
    if not hostname or not pid or hostname.decode(errors="replace") != socket.gethostname():
        return False
    try:
        number = int(pid)
        os.kill(number, 0)
    except ProcessLookupError:
        return True
    except (ValueError, PermissionError, OverflowError):
        return False  # someone else's process (alive), or a pid we cannot read
    started = _process_started_at(number)
    if started is None or not birth:
        return False
    try:
        born = utcparse(birth.decode()).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return False
    return started > born + 2  # a worker's process starts before it registers


def _process_started_at(pid: int) -> float | None:
    """When process ``pid`` started (epoch seconds), from /proc (Linux); None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            ticks = int(f.read().rsplit(b")", 1)[1].split()[19])
        with open("/proc/stat", "rb") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith(b"btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _rescue_intermediate(connection: redis.Redis, queue: Queue) -> list[HandBack]:
    """Requeue jobs a worker moved out of the queue but never started (it died in between).

    Such a job is still "queued", in the queue's intermediate list, and perhaps already in the
    started registry (RQ registers the execution before forking the horse that starts it). It is
    rescued on the second sweep that finds it so, at least a sweep interval after the first: long
    enough for a live worker to have started it. Only its status is read: a job that is not JSON
    is moved back like any other (a worker then fails it with the reason). The dead worker's runs
    of it are forgotten in the same atomic step as the requeue (a worker may claim it at once).
    """
    rescued = []
    job_ids = [decoded(j) for j in connection.lrange(queue.intermediate_queue_key, 0, -1)]
    with connection.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hget(Job.key_for(job_id), "status")
        statuses = pipe.execute()
    for job_id, status in zip(job_ids, statuses, strict=True):
        if status is not None and status != JobStatus.QUEUED.value.encode():
            continue  # started (the started-registry scan covers it) or already ended
        seen_key = f"workqueue:intermediate-seen:{queue.name}:{job_id}"
        if connection.set(seen_key, 1, nx=True, ex=600):
            continue  # first sighting
        if status is None:
            connection.lrem(queue.intermediate_queue_key, 1, job_id)
            continue
        if requeue_unstarted(connection, job_id, queue, seen_key):
            log.warning("job %s was dequeued by a worker that died before starting it; requeued", job_id)
            rescued.append(HandBack(job_id, queue.name, REQUEUED, "dequeued by a worker that died before starting it"))
    return rescued


def requeue_unstarted(connection: redis.Redis, job_id: str, queue: Queue, seen_key: str = "") -> bool:
    """Move a job dequeued but never started from ``queue``'s intermediate list back to the front
    of its list (its own level), unless it was started or moved meanwhile: one atomic step.
    Whether it was moved."""
    home = priorities.home(connection, queue.name, job_id)  # back at its own level
    runs_key = ExecutionRegistry.key_template.format(job_id)
    seen_key = seen_key or f"workqueue:intermediate-seen:{queue.name}:{job_id}"
    keys = [queue.intermediate_queue_key, home, Job.key_for(job_id), seen_key, queue.started_job_registry.key]
    args = [job_id, f"{RQ_KEY_PREFIX}:execution:", queue.name]
    return bool(connection.eval(_REQUEUE_IF_STILL_THERE, 6, *keys, runs_key, *args))


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


def sweep_loop(connection: redis.Redis, interval: float) -> Callable[[threading.Event], None]:
    """A loop that runs :func:`sweep` (and samples the queues' backlog) every ``interval`` seconds
    until its event is set: what a dashboard runs beside its pages, under a ``Supervisor``."""

    def loop(stop: threading.Event) -> None:
        while not stop.wait(interval):
            try:
                sweep(connection)
                jobstats.sample_backlog(connection)
            except redis.RedisError as exc:
                log.warning("sweep for dead workers failed: %s", exc)
            except Exception:  # one bad sweep never ends the loop
                log.exception("sweep for dead workers failed; trying again in %g s", interval)

    return loop
