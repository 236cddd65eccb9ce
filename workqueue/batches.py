"""Batches: every producer run is one. An RQ Group holds its jobs; RQ callbacks on each job (run on
the worker, and allow-listed) record each task's end, once, into the batch's event stream and the
statistics; the last one to end closes the batch. Producers follow the stream, so per-task and
per-batch callbacks run where the work was asked for.

Redis keys, all expiring with the results (RESULT_TTL), as does RQ's group set ``rq:group:<id>``:
each gets its TTL when it is made, and again at the batch's last end (not at every job's end);
- ``workqueue:batch:<id>``: total, remaining, finished, failed, queue, created_at, ended_at;
- ``workqueue:batch:<id>:events``: a stream, one entry per task end, then ``batch=done``;
- ``workqueue:batch:<id>:ended``: the ids already counted, so a job run twice counts once.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache, partial
from typing import Any, TypedDict

import redis
from rq.callbacks import Callback
from rq.group import Group
from rq.job import Job

from workqueue import backlog, jobstats, lua, outage, unique
from workqueue.replies import decoded, decoded_map
from workqueue.settings import DETAIL_MAX, RESULT_TTL

log = logging.getLogger(__name__)

PREFIX = "workqueue:batch:"

# The callbacks RQ runs on the worker; policy.ALLOWED_CALLBACKS names exactly these.
ON_SUCCESS = "workqueue.batches.task_finished"
ON_FAILURE = "workqueue.batches.task_failed"
ON_STOPPED = "workqueue.batches.task_stopped"

_OPEN = lua.script("batch_open")
_GROW = lua.script("batch_grow")

# Count a task's end once; the one that brings `remaining` to 0 closes the batch.
END_SCRIPT = lua.script("batch_end")


def new_id() -> str:
    return uuid.uuid4().hex[:12]


def key(batch_id: str) -> str:
    return PREFIX + batch_id


def events_key(batch_id: str) -> str:
    return f"{PREFIX}{batch_id}:events"


class Callbacks(TypedDict):
    """RQ's callback arguments, as ``Queue.prepare_data(**callbacks())`` takes them."""

    on_success: Callback
    on_failure: Callback
    on_stopped: Callback


def callbacks() -> Callbacks:
    success, failure, stopped = _callbacks()
    return {"on_success": success, "on_failure": failure, "on_stopped": stopped}


@cache
def _callbacks() -> tuple[Callback, Callback, Callback]:
    """RQ's Callbacks, made once per process (RQ reads them, never changes them): one set per enqueued job before."""
    return Callback(ON_SUCCESS), Callback(ON_FAILURE), Callback(ON_STOPPED)


def open_batch(pipe: redis.client.Pipeline, batch_id: str, total: int, queue: str) -> None:
    """Record a new batch of ``total`` tasks, inside the transaction that enqueues them."""
    pipe.eval(_OPEN, 3, key(batch_id), f"{key(batch_id)}:ended", events_key(batch_id), total, queue, RESULT_TTL)


def grow(pipe: redis.client.Pipeline, batch_id: str, delta: int) -> None:
    """Inside an enqueueing transaction: the batch has ``delta`` more tasks (a running job adding
    jobs to its own batch, so its end is still to come) or fewer (calls whose unique job was already
    queued); the batch ends here if none remain."""
    pipe.eval(_GROW, 2, key(batch_id), events_key(batch_id), delta, RESULT_TTL)


class BatchGroup(Group):
    """RQ's Group, whose set of job ids expires with the batch's keys: RQ's never expires (its
    workers' maintenance drops only ids whose job has gone), so each batch left one set behind."""

    def _add_jobs(self, jobs: Any, pipeline: redis.client.Pipeline) -> None:
        """RQ's (which executes ``pipeline``), with the set's TTL in the same transaction."""
        pipeline.sadd(self.key, *[job.id for job in jobs])
        pipeline.expire(self.key, RESULT_TTL)
        pipeline.sadd(self.REDIS_GROUP_KEY, self.name)
        pipeline.execute()


def group(connection: redis.Redis, batch_id: str) -> Group:
    return BatchGroup(connection=connection, name=batch_id)


# -- on the worker ------------------------------------------------------------------------------


def task_finished(job: Job, connection: redis.Redis, result: Any, *args: Any, **kwargs: Any) -> None:
    job_ended(connection, job, "finished", detail=result)


def task_failed(job: Job, connection: redis.Redis, exc_type: Any, exc_value: Any, traceback: Any) -> None:
    if job.should_retry:
        return  # not its end: it will run again
    if getattr(job, "count_failure_in_end", False):
        return  # our worker counts it in the failure's own transaction, if the run still holds the job
    job_ended(connection, job, "failed", detail=f"{getattr(exc_type, '__name__', 'Error')}: {exc_value}")


def task_stopped(job: Job, connection: redis.Redis) -> None:
    by = (job.meta or {}).get("stopped_by", "kill_job")
    job_ended(connection, job, "failed", detail=f"stopped by {by}")


def job_ended(connection: redis.Redis, job: Job, outcome: str, detail: Any = None) -> None:
    """Count the end of ``job`` in its batch (once) and in the statistics; never fail the job."""
    try:
        with connection.pipeline(transaction=False) as pipe:
            record_end(pipe, job, outcome, detail)
            pipe.execute()
    except redis.RedisError:
        log.warning("could not record the end of job %s", job.id, exc_info=True)


def figures(job: Job, task: str | None = None) -> tuple[str, float | None, float | None]:
    """What the statistics keep of a job ending now: its task's name, its run and its wait
    (enqueue to start) in seconds, None where unknown. ``task``: its name, for a job whose data
    cannot be read."""
    started = job.started_at
    run = (_utcnow() - started).total_seconds() if started else None
    wait = (started - job.enqueued_at).total_seconds() if started and job.enqueued_at else None
    return task or (job.meta or {}).get("task") or job.func_name or "?", run, wait


def record_end(
    pipe: redis.client.Pipeline,
    job: Job,
    outcome: str,
    detail: Any = None,
    task: str | None = None,
    *,
    stats: tuple[str, float | None, float | None] | None = None,
) -> None:
    """Queue on ``pipe`` the commands that count the end of ``job`` in its batch and the statistics,
    so a worker can record them in the same transaction as the job's own end. ``task``: its name,
    for a job whose data cannot be read. ``stats``: the job's :func:`figures`, which the caller
    counts in its ``tallies.Tally`` once the end is recorded: the statistics are then left out."""
    task, run, wait = stats or figures(job, task)
    if job.group_id:
        pipe.eval(END_SCRIPT, *end_args(job.group_id, job.id, outcome, task, detail, run))
    if stats is None:
        jobstats.record_end(pipe, job.origin, task, outcome, run, wait)
    unique.release(pipe, job)
    backlog.forget(pipe, job)  # its end, in the same step: the KEDA key stays exact


def end_args(batch_id: str, job_id: str, outcome: str, task: str, detail: Any, run: float | None) -> list[Any]:
    """The arguments of :func:`record_end`'s script after its text (its key count, keys and arguments): the
    end of job ``job_id`` in batch ``batch_id``, its ``detail`` (result or error) as JSON, cut to DETAIL_MAX."""
    text = json.dumps(detail, default=str)
    if len(text) > DETAIL_MAX:  # cut, and still JSON: a string of its start (escaping at most doubles it)
        text = json.dumps(text[: DETAIL_MAX // 2 - 5] + "...", ensure_ascii=False)
    keys = [key(batch_id), f"{key(batch_id)}:ended", events_key(batch_id), Group.get_key(batch_id)]
    return [4, *keys, job_id, outcome, task, text, round(run or 0.0, 4), RESULT_TTL]


def _utcnow() -> datetime:
    return datetime.now(UTC)


# -- on the producer ----------------------------------------------------------------------------


@dataclass
class TaskEnd:
    """One task's end, as the batch's stream tells it."""

    job_id: str
    task: str
    outcome: str
    detail: Any
    duration: float
    redelivery: bool = False


@dataclass
class BatchSummary:
    batch_id: str
    total: int
    finished: int
    failed: int
    #: Seconds from the batch's creation to its last task's end, both read from Redis's clock.
    elapsed: float | None
    done: bool
    queue: str = ""
    failures: list[TaskEnd] = field(default_factory=list)


def summary(connection: redis.Redis, batch_id: str) -> BatchSummary:
    """Where a batch stands; raises KeyError for an unknown (or expired) batch."""
    data = decoded_map(connection.hgetall(key(batch_id)))
    if not data:
        raise KeyError(batch_id)
    ended = float(data["ended_at"]) if data.get("ended_at") else None
    return BatchSummary(
        batch_id, int(data["total"]), int(data["finished"]), int(data["failed"]),
        ended - float(data["created_at"]) if ended else None, ended is not None, data.get("queue", ""),
    )  # fmt: skip


def job_statuses(connection: redis.Redis, batch_id: str) -> list[tuple[str, str | None]]:
    """Each of the batch's job ids with its status (None once the job has expired), in one round
    trip. The group's ids are read directly: RQ's Group.get_jobs fetches with the pickle serializer."""
    ids = sorted(decoded(i) for i in connection.smembers(group(connection, batch_id).key))
    with connection.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hget(Job.key_for(job_id), "status")
        statuses = pipe.execute()
    return [(job_id, status.decode() if status else None) for job_id, status in zip(ids, statuses, strict=True)]


def follow(
    connection: redis.Redis,
    batch_id: str,
    *,
    timeout: float | None = None,
    block_ms: int = 500,
    on_outage: Callable[[str | None], Any] | None = None,
    mark: outage.DataMark | None = None,
) -> Iterator[TaskEnd]:
    """Yield each task's end, from the batch's start, until the batch is done (or ``timeout``).

    With ``on_outage``, a Redis outage is waited out: ``on_outage(what)`` when one starts (``what``
    from ``outage.describe``), ``on_outage(None)`` when Redis answers again. With ``mark`` (the
    data mark this process saw), a batch gone because Redis lost its data raises RedisLostData."""
    deadline = None if timeout is None else time.monotonic() + timeout
    last, ended = "0", False
    while True:
        # once the batch is known to have ended, what its stream still holds is read without waiting
        block = None if ended else block_ms
        read = partial(connection.xread, {events_key(batch_id): last}, count=500, block=block)  # this `last`
        replies = _riding(read, connection, on_outage, mark)
        for _stream, entries in replies or []:
            for entry_id, fields in entries:
                last = entry_id.decode()
                data = {k.decode(): v.decode() for k, v in fields.items()}
                if data.get("batch") == "done":
                    return
                yield TaskEnd(data["job"], data["task"], data["outcome"], json.loads(data["detail"]),
                              float(data["duration"]), data.get("redelivery") == "1")  # fmt: skip
        if not replies:
            if ended:
                return  # the stream expired or was trimmed
            # The batch may have ended just after that read gave up waiting: its last ends are then
            # in the stream, and the next read (at once) tells them before its end.
            ended = _riding(lambda: _done(connection, batch_id, mark), connection, on_outage, mark)
            if not ended and deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"batch {batch_id} did not end within {timeout:g} s")


def _done(connection: redis.Redis, batch_id: str, mark: outage.DataMark | None) -> bool:
    try:
        return summary(connection, batch_id).done
    except KeyError:
        if mark is not None:
            mark.check(connection)  # RedisLostData if that is why it is gone
        raise


def _riding(
    read: Callable[[], Any],
    connection: redis.Redis,
    on_outage: Callable[[str | None], Any] | None,
    mark: outage.DataMark | None,
) -> Any:
    """``read()``, waiting out an outage if ``on_outage`` is given (see :func:`follow`)."""
    backoff, down = 0.5, False
    while True:
        try:
            result = read()
        except redis.RedisError as exc:
            if on_outage is None or not outage.is_outage(exc):
                raise
            if not down:
                on_outage(outage.describe(exc))
                down = True
            time.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
            continue
        if down and on_outage is not None:  # down only ever with on_outage
            on_outage(None)
            if mark is not None:
                try:
                    mark.check(connection)  # back, but with the data it had?
                except redis.RedisError:
                    pass  # refusing writes only: the reads go on
        return result


def wait(
    connection: redis.Redis,
    batch_id: str,
    *,
    on_task: Callable[[TaskEnd], Any] | None = None,
    on_done: Callable[[BatchSummary], Any] | None = None,
    timeout: float | None = None,
    on_outage: Callable[[str | None], Any] | None = None,
    mark: outage.DataMark | None = None,
) -> BatchSummary:
    """Follow a batch to its end, calling ``on_task`` for each task's end and ``on_done`` once
    (``on_outage`` and ``mark``: see :func:`follow`)."""
    failures = []
    for end in follow(connection, batch_id, timeout=timeout, on_outage=on_outage, mark=mark):
        if end.outcome != "finished" and not end.redelivery:
            failures.append(end)
        if on_task is not None:
            on_task(end)
    result = _riding(lambda: summary(connection, batch_id), connection, on_outage, mark)
    result.failures = failures
    if on_done is not None:
        on_done(result)
    return result
