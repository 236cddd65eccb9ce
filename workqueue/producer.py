"""Enqueueing catalogue tasks (one, many, from a file) and following them until they end.

Everything is validated before anything is written. Jobs go to Redis in transactions of up to
:data:`CHUNK` (1,000), each one script call (``lua/enqueue.lua``), or a WATCHed MULTI where unique
keys or a cap must be read first: a run of at most that many enqueues all of its jobs or none; a larger one is
several transactions, each all or none, and if Redis fails midway the error says how many landed
(the batch then waits for the rest: follow it, or enqueue the rest). The producer's memory stays
flat in the number of jobs (``--from-file`` is read a chunk at a time: ``calls.CallFile``).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import random
import time
import uuid
import weakref
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import redis
from rq import Queue
from rq.job import Dependency, Job, JobStatus
from rq.queue import EnqueueData

from workqueue import (
    backlog,
    batches,
    dependencies,
    jobstats,
    limits,
    lua,
    outage,
    priorities,
    queued_hash,
    rq_compat,
    unique,
)
from workqueue.calls import (  # re-exported: callers build calls as producer.TaskCall
    TaskCall,
)
from workqueue.connection import send_direct, single_connection, without_retries
from workqueue.errors import BadInput, NotDurable, RedisUnavailable
from workqueue.jobs import SERIALIZER, CatalogueJob, check_queue_name
from workqueue.settings import (
    DEFAULT_QUEUE,
    DURABLE_WAIT,
    FAILURE_TTL,
    MAX_COUNT,
    RESULT_TTL,
    STATS_RETENTION,
)


class JobRef:
    """A job a run enqueued, by its id: RQ's Job (2.5 KB of Python each) is fetched from Redis only
    when something other than ``id`` or ``key`` is read, so a run of 100,000 jobs holds ids, not jobs."""

    __slots__ = ("_connection", "_full", "id")

    def __init__(self, job_id: str, connection: redis.Redis) -> None:
        self.id, self._connection = job_id, connection
        self._full: Job | None = None

    @property
    def key(self) -> str:
        return Job.key_for(self.id)

    def job(self) -> Job:
        """The whole job, fetched once."""
        if self._full is None:
            self._full = CatalogueJob.fetch(self.id, connection=self._connection, serializer=SERIALIZER)
        return self._full

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.job(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        """Its own slots here; anything else is set on the whole job, as on RQ's Job."""
        if name in JobRef.__slots__:
            object.__setattr__(self, name, value)
        else:
            setattr(self.job(), name, value)

    def __repr__(self) -> str:
        return f"JobRef({self.id!r})"

    def __eq__(self, other: object) -> bool:
        return getattr(other, "id", None) == self.id

    def __hash__(self) -> int:
        return hash(self.id)


@dataclass
class Submission:
    """What one producer run enqueued: a batch of jobs on a queue."""

    batch_id: str
    queue: str
    #: The jobs this run created (:class:`JobRef`s, or RQ's Jobs for a batch that waits).
    jobs: list[Any]
    #: The calls that found their unique key held by a job already queued or running: that job's
    #: id, by the call's position in the run.
    existing: dict[int, str] = field(default_factory=dict)
    #: Calls left out because ``cap`` was reached (a crawl's page limit).
    capped: int = 0
    #: With ``enqueue(..., mark=True)``: the data mark, read in the transaction that opened the batch.
    mark: outage.DataMark | None = None


@dataclass(frozen=True)
class Cap:
    """At most ``limit`` jobs counted in the Redis integer at ``key``, over every enqueue that names
    it (a crawl's pages): checked and counted in the enqueueing transaction."""

    key: str
    limit: int
    ttl: int = RESULT_TTL


#: Jobs per enqueueing transaction: a run of more goes in as several, one after the other, so the
#: producer's memory (RQ's jobs and the commands of one transaction) stays flat in the number of jobs.
CHUNK = 1_000

#: How many times an enqueue whose unique keys (or cap) changed under it is tried again.
WATCH_TRIES = 50


def enqueue(
    connection: redis.Redis,
    calls: Sequence[TaskCall],
    queue: str = DEFAULT_QUEUE,
    *,
    max_queued: int | None = None,
    on_wait: Callable[[int], Any] | None = None,
    batch_id: str | None = None,
    into_batch: bool = False,
    cap: Cap | None = None,
    # -- when work runs (issue 15): a time to run at, jobs or batches to wait for --
    when: datetime | None = None,
    after: Sequence[str] = (),
    after_any: bool = False,
    durable: bool = False,
    mark: bool = False,
) -> Submission:
    """Enqueue every call on ``queue`` as one batch.

    Without ``max_queued``: transactions of up to :data:`CHUNK` jobs, each all or none (the error of a
    failure midway says how many landed); ``calls`` may be a :class:`CallFile`, read a chunk at a time.
    The submission's jobs are :class:`JobRef`s (ids, fetched on use). With ``max_queued``, the jobs go
    in as the queue has room, never taking it past ``max_queued`` (``on_wait(queued)`` is called
    while the producer waits for consumers to drain it). ``batch_id`` lets a caller that must
    record something about the batch first (the gateway, its callback) choose the id; with
    ``into_batch`` the jobs join that batch, already open (a running job adding to its own batch).
    A unique call whose key a live job holds is not enqueued: ``existing`` names that job.

    ``when`` (an aware time, see ``timing.resolve``): the jobs wait in RQ's scheduled registry until
    then. ``after`` (job or batch ids): they wait deferred until those end, and run if all
    finished (``after_any``: whatever the outcome); see ``dependencies``.
    ``durable``: each transaction is followed by ``WAIT 1`` (:func:`confirm_replicated`), NotDurable
    if no replica acknowledged it. ``mark``: the submission's ``mark`` is Redis's data mark
    (``outage.DataMark``), read in the transaction that opens the batch (no round trip of its own).
    """
    check_queue_name(queue)
    if not 1 <= len(calls) <= MAX_COUNT:
        raise BadInput(f"between 1 and {MAX_COUNT:,} jobs may be enqueued at once, not {len(calls):,}", "count")
    if max_queued is not None and max_queued < 1:
        raise BadInput(f"max_queued must be at least 1, not {max_queued}")
    if into_batch and batch_id is None:
        raise ValueError("into_batch needs the batch_id of an open batch")
    rq_compat.install()  # a program using the API directly has not run an entry point's (priorities, serializers)
    q = _queue(connection, queue)
    batch_id = batch_id or batches.new_id()
    if durable:
        connection = single_connection(connection)  # WAIT counts the writes of its own connection
    if when is not None or after:  # when work runs (issue 15)
        if into_batch or cap is not None or any(call.unique_key for call in calls):
            raise BadInput("unique jobs run now: --unique/--unique-key do not combine with --in, --at or --after")
        later = _enqueue_later(connection, q, calls, batch_id, when=when, after=after, after_any=after_any,
                               max_queued=max_queued, mark=mark)  # fmt: skip
        if durable:
            confirm_replicated(connection, batch_id, len(later.jobs))
        return later
    pending = enumerate(calls)
    submission = Submission(batch_id, queue, [])
    opened = into_batch
    left = len(calls)
    try:
        while left:
            room = left if max_queued is None else _wait_for_room(connection, q, max_queued, on_wait)
            chunk = list(itertools.islice(pending, min(room, CHUNK)))
            left -= len(chunk)
            _commit(connection, q, submission, chunk, None if opened else len(calls), cap, added=into_batch,
                    mark=mark and submission.mark is None, direct=not durable)  # fmt: skip
            opened = True
            if durable:
                confirm_replicated(connection, batch_id, len(submission.jobs))
    except redis.RedisError as exc:
        if not outage.is_outage(exc):
            raise
        chunked = max_queued is not None or len(calls) > CHUNK
        raise _unavailable(connection, exc, submission.jobs, len(calls), batch_id, chunked=chunked) from None
    return submission


#: RQ's Queue objects by client and name: building one checks its serializer against RQ's protocol,
#: a sizeable part of enqueueing a single job; they hold nothing that changes between enqueues.
_queues: weakref.WeakKeyDictionary[redis.Redis, dict[str, Queue]] = weakref.WeakKeyDictionary()


def _queue(connection: redis.Redis, name: str) -> Queue:
    """RQ's Queue ``name`` on ``connection`` (made once per client)."""
    by_name = _queues.get(connection)
    if by_name is None:
        by_name = _queues.setdefault(connection, {})
    q = by_name.get(name)
    if q is None:
        q = by_name[name] = Queue(name, connection=connection, serializer=SERIALIZER, job_class=CatalogueJob)
    return q


def _commit(
    connection: redis.Redis,
    q: Queue,
    submission: Submission,
    chunk: list[tuple[int, TaskCall]],
    open_total: int | None,
    cap: Cap | None,
    *,
    added: bool = False,
    mark: bool = False,
    direct: bool = True,
) -> None:
    """Enqueue one chunk in one transaction (opening the batch with ``open_total`` tasks first, if
    given; ``added``: the batch's total does not count these calls yet, so it grows), leaving out
    the unique calls whose key a live job holds and those over ``cap``. The keys and the cap are
    WATCHed: if another producer changed them meanwhile, it is all read and tried again. ``mark``:
    the data mark is read in the same transaction, into ``submission.mark``."""
    wanted = [(i, call, call.unique_key and unique.redis_key(call.unique_key)) for i, call in chunk]
    keys = sorted({k for _, _, k in wanted if k})
    if not keys and cap is None and not added:  # nothing to read first: the whole chunk in one script call
        _commit_at_once(connection, q, submission, chunk, open_total, mark=mark, direct=direct)
        return
    watched = keys + ([cap.key] if cap else [])
    for attempt in range(WATCH_TRIES):
        with connection.pipeline(transaction=True) as pipe:
            try:
                if watched:
                    pipe.watch(*watched)
                held = unique.holders(pipe, keys)
                room = None if cap is None else max(0, cap.limit - int(pipe.get(cap.key) or 0))
                fresh, existing, capped = _sort_out(wanted, held, room)
                pipe.multi()
                if mark:
                    outage.DataMark.adopt_in(pipe)  # replies 0 and 1
                if open_total is not None:
                    batches.open_batch(pipe, submission.batch_id, open_total, q.name)
                delta = len(fresh) if added else len(fresh) - len(chunk)
                if delta:
                    batches.grow(pipe, submission.batch_id, delta)
                for _i, _call, key, data in fresh:
                    if key:
                        unique.claim(pipe, key, data.job_id)
                if cap is not None and fresh:
                    pipe.incrby(cap.key, len(fresh))
                    pipe.expire(cap.key, cap.ttl)
                jobstats.count_enqueued(pipe, q.name, Counter(call.task.name for _, call, _, _ in fresh))
                backlog.add(pipe, q.name, [data.job_id for *_, data in fresh])  # ids known: counted in this step
                jobs = []
                if fresh:  # RQ's Group.enqueue_many, its set expiring with the batch (batches.BatchGroup)
                    jobs = q.enqueue_many([data for *_, data in fresh], group_id=submission.batch_id, pipeline=pipe)
                    _add_to_group(pipe, submission.batch_id, [job.id for job in jobs])
                replies = pipe.execute()
            except redis.WatchError:
                time.sleep(random.uniform(0, 0.002 * attempt))  # spread the racers out
                continue
        if mark:
            submission.mark = outage.DataMark.adopted(replies[0], replies[1])
        submission.jobs += [JobRef(job.id, connection) for job in jobs]
        submission.existing.update(existing)
        submission.capped += capped
        return
    raise RedisUnavailable(f"the unique keys of {len(keys)} jobs kept changing under {WATCH_TRIES} tries; try again")


#: The enqueueing transaction as one script (``lua/enqueue.lua``): one EVALSHA instead of a MULTI of
#: 23 commands (one an EVAL sending batch_open's text): 1.5 KB sent instead of 2.7, one request for
#: Redis to parse (its 18 commands run inside), none of redis-py's per-command packing and replies.
ENQUEUE_SCRIPT = lua.script("bell") + lua.script("enqueue")  # bells.py: it rings idle workers


@functools.cache
def _enqueue_sha() -> str:
    return hashlib.sha1(ENQUEUE_SCRIPT.encode()).hexdigest()


def _commit_at_once(
    connection: redis.Redis,
    q: Queue,
    submission: Submission,
    chunk: list[tuple[int, TaskCall]],
    open_total: int | None,
    *,
    mark: bool = False,
    direct: bool = True,
) -> None:
    """Enqueue one chunk of calls that read nothing first (no unique key, no cap) in one script
    call, all or nothing: the same keys, fields and TTLs as :func:`_commit`'s transaction (the
    data mark, the batch opened with ``open_total`` tasks, the statistics, the backlog, RQ's job
    hashes, lists, queue set and group), ``tests/test_job_steps.py`` holding them. ``direct``: sent
    with ``connection.send_direct`` (not for a durable enqueue, whose writes must go over the one
    connection its ``WAIT`` is then sent on)."""
    batch_id = submission.batch_id
    jobs = [queued_hash.fields(q, _prepare(call), batch_id) for _i, call in chunk]
    counts = Counter(call.task.name for _i, call in chunk)
    group = batches.group(connection, batch_id)
    keys = [
        outage.MARK_KEY, batches.key(batch_id), f"{batches.key(batch_id)}:ended", batches.events_key(batch_id),
        jobstats.bucket_key(q.name, jobstats.minute()), f"{jobstats.PREFIX}:queues", backlog.key(q.name),
        q.redis_queues_keys, group.key, group.REDIS_GROUP_KEY,
    ]  # fmt: skip
    args: list[Any] = [
        outage.new_mark() if mark else "", "" if open_total is None else open_total, q.name, RESULT_TTL,
        STATS_RETENTION, q.key, batch_id, time.time(), len(counts),
    ]  # fmt: skip
    for task, n in counts.items():
        args += (f"{task}:enqueued", n)
    for (_i, call), (job_id, fields) in zip(chunk, jobs, strict=True):
        keys += (Job.key_for(job_id), priorities.key(q.name, call.priority))
        args += (job_id, len(fields))
        for name, value in fields.items():
            args += (name, value)
    try:
        if direct:
            created, held = send_direct(connection, "EVALSHA", _enqueue_sha(), len(keys), *keys, *args)
        else:
            created, held = connection.evalsha(_enqueue_sha(), len(keys), *keys, *args)
    except redis.exceptions.NoScriptError:  # a Redis that restarted (or flushed its scripts) since
        created, held = connection.eval(ENQUEUE_SCRIPT, len(keys), *keys, *args)
    if mark:
        submission.mark = outage.DataMark.adopted(created, held)
    submission.jobs += [JobRef(job_id, connection) for job_id, _fields in jobs]


def _add_to_group(pipe: redis.client.Pipeline, batch_id: str, job_ids: list[str]) -> None:
    """Add ``job_ids`` to RQ's group of batch ``batch_id`` (its set of job ids), on ``pipe``: what
    ``batches.BatchGroup`` does, with the transaction's replies left to the caller."""
    group = batches.group(pipe, batch_id)
    pipe.sadd(group.key, *job_ids)
    pipe.expire(group.key, RESULT_TTL)
    pipe.sadd(group.REDIS_GROUP_KEY, batch_id)


def _sort_out(
    wanted: list[tuple[int, TaskCall, str | None]], held: dict[str, str], room: int | None
) -> tuple[list[tuple[int, TaskCall, str | None, EnqueueData]], dict[int, str], int]:
    """The calls to enqueue now (with their job data), the ones whose job exists, and how many are over the cap."""
    held = dict(held)
    fresh: list[tuple[int, TaskCall, str | None, EnqueueData]] = []
    existing: dict[int, str] = {}
    capped = 0
    for i, call, key in wanted:
        if key and key in held:
            existing[i] = held[key]
        elif room is not None and len(fresh) >= room:
            capped += 1
        else:
            data = _prepare(call, key)
            fresh.append((i, call, key, data))
            if key:
                held[key] = data.job_id
    return fresh, existing, capped


def confirm_replicated(connection: redis.Redis, batch_id: str, count: int, timeout: float = DURABLE_WAIT) -> None:
    """``WAIT 1``: return once a replica holds every write this connection made; NotDurable if none
    did within ``timeout`` seconds. Redis replicates asynchronously: a job acknowledged by the master
    alone is lost if the master dies before sending it on (a Sentinel failover promotes a replica)."""
    acknowledged = connection.wait(1, int(timeout * 1000))
    if acknowledged < 1:
        raise NotDurable(
            f"batch {batch_id}: {count} jobs enqueued on the master, but no replica acknowledged them within "
            f"{timeout:g} s (WAIT 1); they are lost if the master fails now: check its replicas (INFO replication)"
        )


def _prepare(call: TaskCall, key: str | None = None) -> EnqueueData:
    """What RQ needs to enqueue ``call`` as one job of a batch (``key``: the unique key it holds)."""
    meta: dict[str, Any] = {"task": call.task.name, **(call.meta or {})}
    if key:
        meta.update(unique.meta(key, call.unique_for))
    return Queue.prepare_data(
        call.task.func,
        kwargs=call.params,
        timeout=call.job_timeout(),
        retry=call.retry(),
        result_ttl=call.kept_for(),
        failure_ttl=FAILURE_TTL,
        description=call.describe(),
        meta={
            **meta,
            **priorities.meta(call.priority),
            **limits.job_meta(call.effective_limit_key(), call.task.default_limit),
        },
        job_id=uuid.uuid4().hex if key else str(uuid.uuid4()),  # known before the enqueue (backlog, unique)
        **batches.callbacks(),
    )


def _unavailable(
    connection: redis.Redis, exc: redis.RedisError, jobs: list[Job], count: int, batch_id: str, *, chunked: bool
) -> RedisUnavailable:
    """The error for an outage in the middle of ``enqueue``, saying which of its jobs landed."""
    if chunked:  # each transaction lands whole or not at all; the one under way is not in ``jobs``
        under_way = "did not" if outage.refusal(exc) is not None else "may have"
        landed = (
            f"{len(jobs)} of {count} jobs were enqueued before it did (batch {batch_id}; in transactions of at most "
            f"{CHUNK:,} jobs, each all or none: the one under way {under_way})"
        )
    elif outage.refusal(exc) is not None:  # refused before EXEC: the transaction never ran
        landed = "nothing was enqueued"
    else:
        landed = _which_landed(connection, jobs)
    code = outage.refusal(exc)
    if code is not None:
        return RedisUnavailable(f"Redis refused the write ({outage.REFUSALS[code]}); {landed}")
    return RedisUnavailable(f"Redis went away while enqueueing ({exc}); {landed}")


def _wait_for_room(
    connection: redis.Redis, queue: Queue, max_queued: int, on_wait: Callable[[int], Any] | None, poll: float = 0.2
) -> int:
    """Block until ``queue`` holds fewer than ``max_queued`` jobs; how many more it can take."""
    while True:
        queued = priorities.waiting(connection, queue.name)
        if queued < max_queued:
            return max_queued - queued
        if on_wait is not None:
            on_wait(queued)
        time.sleep(poll)


def _which_landed(connection: redis.Redis, jobs: list[Job]) -> str:
    """All or none of a transaction's jobs landed: say which, if Redis answers again to tell."""
    if not jobs:
        return "nothing was enqueued"
    try:
        landed = without_retries(connection).exists(jobs[0].key)
    except redis.RedisError:
        return (
            f"the {len(jobs)} jobs were sent in one transaction, so all or none were enqueued (check job {jobs[0].id})"
        )
    return f"all {len(jobs)} jobs were enqueued" if landed else "nothing was enqueued"


# -- when work runs (issue 15): delayed jobs and jobs that wait for others ---------------------------


def _enqueue_later(
    connection: redis.Redis,
    q: Queue,
    calls: Sequence[TaskCall],
    batch_id: str,
    *,
    when: datetime | None,
    after: Sequence[str],
    after_any: bool,
    max_queued: int | None,
    mark: bool = False,
) -> Submission:
    """Enqueue ``calls`` as one batch that waits: in RQ's scheduled registry until ``when``, or
    deferred until the jobs of ``after`` end (RQ's ``Dependency``), in one transaction. Dependencies
    that have already ended are decided here: the jobs are queued at once, or cancelled with the
    reason (``dependencies.verdict``); the transaction WATCHes them, so one ending meanwhile is seen."""
    if when is not None and after:
        raise BadInput("a batch waits for a time or for other work, not both (give --in/--at or --after)", "after")
    if max_queued is not None:
        raise BadInput("--max-queued holds back jobs to run now; it does not combine with --in, --at or --after")
    if when is not None and when.tzinfo is None:
        raise BadInput("when: expected an aware datetime (see workqueue.timing.resolve)", "at")
    waits_for = dependencies.resolve(connection, after) if after else []
    if len(waits_for) * len(calls) > dependencies.MAX_LINKS:
        raise BadInput(
            f"{len(calls):,} jobs each waiting for {len(waits_for):,} is too many links "
            f"(at most {dependencies.MAX_LINKS:,}); wait for fewer jobs or enqueue fewer",
            "after",
        )
    if when is not None and when.microsecond:  # RQ's scheduler keeps whole seconds: never run early
        when = when.replace(microsecond=0) + timedelta(seconds=1)
    depends = Dependency(jobs=waits_for, allow_failure=after_any) if waits_for else None
    jobs = [_create_job(q, call, batch_id, depends) for call in calls]
    names = Counter(call.task.name for call in calls)
    try:
        with connection.pipeline(transaction=True) as pipe:
            while True:
                try:
                    decision = None
                    if waits_for:
                        pipe.watch(*[Job.key_for(job_id) for job_id in waits_for])
                        states = dependencies.statuses(connection, waits_for)
                        decision = dependencies.verdict(waits_for, states, after_any)
                    pipe.multi()
                    if mark:
                        outage.DataMark.adopt_in(pipe)  # replies 0 and 1
                    batches.open_batch(pipe, batch_id, len(calls), q.name)
                    jobstats.count_enqueued(pipe, q.name, names)
                    backlog.add(pipe, q.name, [job.id for job in jobs])
                    pipe.sadd(q.redis_queues_keys, q.key)
                    for job in jobs:
                        _place(pipe, q, job, when, decision)
                    _add_to_group(pipe, batch_id, [job.id for job in jobs])
                    replies = pipe.execute()
                    break
                except redis.WatchError:
                    continue
    except redis.RedisError as exc:
        if not outage.is_outage(exc):
            raise
        raise _unavailable(connection, exc, jobs, len(calls), batch_id, chunked=False) from None
    return Submission(batch_id, q.name, jobs, mark=outage.DataMark.adopted(replies[0], replies[1]) if mark else None)


def _create_job(q: Queue, call: TaskCall, batch_id: str, depends: Dependency | None) -> Job:
    """The job RQ would build for ``call`` in batch ``batch_id`` (not yet written)."""
    data = _prepare(call)
    return q.create_job(
        data.func, kwargs=data.kwargs, timeout=data.timeout, result_ttl=data.result_ttl, failure_ttl=data.failure_ttl,
        description=data.description, meta=data.meta, retry=data.retry, depends_on=depends,
        on_success=data.on_success, on_failure=data.on_failure, on_stopped=data.on_stopped, group_id=batch_id,
    )  # fmt: skip


def _place(pipe: redis.client.Pipeline, q: Queue, job: Job, when: datetime | None, decision: str | None) -> None:
    """Queue on ``pipe`` where ``job`` goes: scheduled at ``when``; deferred (``decision`` None);
    queued (``"run"``: what it waits for has ended as it asked); or cancelled with the reason."""
    if when is not None:
        q.schedule_job(job, when, pipeline=pipe)
    elif decision is None:
        job.set_status(JobStatus.DEFERRED, pipeline=pipe)
        job.register_dependency(pipeline=pipe)
        job.save(pipeline=pipe)
    elif decision == "run":
        rq_compat.enqueue_job(q, job, pipeline=pipe)
    else:
        job.save(pipeline=pipe)
        dependencies.cancel_in(pipe, job, decision)
