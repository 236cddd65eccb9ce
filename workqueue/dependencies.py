"""Jobs that wait for other work (``--after JOB_OR_BATCH [--after-any]``): RQ's dependencies, released
by one mechanism of our own.

A dependent job is an RQ job with ``depends_on=Dependency(jobs=..., allow_failure=after_any)``: it
waits deferred (RQ's deferred registry, and its id in each dependency's ``dependents`` set). RQ
releases dependents inside the transaction that records a success, WATCHing the statuses; our
workers record an end in a transaction of their own first, and RQ's ``enqueue_dependents`` called
after it WATCHes neither the dependent nor its status: two dependencies ending at once on two
workers both saw all ended and both released the dependent (it ran twice), and its ready-registry
step could leave it stranded. RQ never settles the other cases either: a dependent whose
dependency failed, was stopped or was cancelled stays deferred for ever.

:func:`settle`, called wherever a job ends (a worker's success, failure or stop, a recovery that
gives up, a cancel), decides each dependent in one transaction that WATCHes the dependent and all
it waits for and acts only on a dependent still deferred: it is released (queued) exactly once,
by whichever end sees the last of its dependencies ended, or cancelled with the reason recorded
(``cancelled: dependency JOB failed``) and counted in its batch, down the chain.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import CanceledJobRegistry, DeferredJobRegistry

from workqueue import batches, rq_compat
from workqueue.errors import BadInput, UnreadableJob
from workqueue.jobs import SERIALIZER, CatalogueJob, fetch_job
from workqueue.replies import decoded_members, decoded_or_none

log = logging.getLogger(__name__)

#: The statuses a job does not leave again (but by a requeue, which starts it afresh).
ENDED = frozenset({JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED})
#: The ends that cancel a dependent which did not ask to run whatever the outcome.
UNSUCCESSFUL = frozenset({JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED})

#: The most dependency links (jobs enqueued times jobs waited for) one enqueue may create.
MAX_LINKS = 200_000

#: Where a dependent job's reason for being cancelled is kept (``job.meta``).
REASON = "cancelled_reason"


def resolve(connection: redis.Redis, targets: Iterable[str], field: str = "after") -> list[str]:
    """The job ids that ``targets`` (job ids or batch ids, a batch meaning all its jobs) name, in
    order, each once; BadInput naming ``field`` for a target that is neither."""
    ids: list[str] = []
    for target in targets:
        if not isinstance(target, str) or not target.strip():
            raise BadInput(f"{field}: expected a job id or a batch id, not {target!r}", field)
        target = target.strip()
        members = decoded_members(connection.smembers(batches.group(connection, target).key))
        if members and connection.exists(batches.key(target)):
            ids += sorted(members)
        elif connection.exists(Job.key_for(target)):
            ids.append(target)
        else:
            raise BadInput(f"{field}: no such job or batch: {target} (nothing was enqueued)", field)
    return list(dict.fromkeys(ids))


def statuses(connection: redis.Redis, job_ids: Sequence[str]) -> list[JobStatus | None]:
    """Each job's status (None for one that has gone), in one round trip (a caller that must not
    miss a change WATCHes their keys on its own pipeline first)."""
    with connection.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hget(Job.key_for(job_id), "status")
        raw = pipe.execute()
    return [JobStatus(decoded_or_none(s)) if s else None for s in raw]


def verdict(job_ids: Sequence[str], states: Sequence[JobStatus | None], after_any: bool) -> str | None:
    """What a dependent of jobs in ``states`` must do now: None (wait), ``"run"``, or the reason it
    is cancelled. A job that has gone (expired) counts as ended and finished, as in RQ."""
    bad = None if after_any else _first_unsuccessful(job_ids, states)
    if bad is not None:
        return bad  # at once, without waiting for the others to end
    return "run" if all(s is None or s in ENDED for s in states) else None


def _first_unsuccessful(job_ids: Sequence[str], states: Sequence[JobStatus | None]) -> str | None:
    for job_id, state in zip(job_ids, states, strict=True):
        if state in UNSUCCESSFUL:
            word = {JobStatus.FAILED: "failed", JobStatus.STOPPED: "was stopped"}.get(state, "was cancelled")
            return f"cancelled: dependency {job_id} {word}"
    return None


def dependency_ids(job: Job) -> list[str]:
    """The ids of the jobs ``job`` waits for (as enqueued)."""
    return list(getattr(job, "_dependency_ids", None) or [])


def waiting_for(connection: redis.Redis, job: Job) -> dict[str, Any] | None:
    """What a job waits for, as JSON-able data (None if it waits for nothing): each job with its
    status, and whether it runs whatever their outcome."""
    ids = dependency_ids(job)
    if not ids:
        return None
    with connection.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hget(Job.key_for(job_id), "status")
        raw = pipe.execute()
    return {
        "jobs": [{"id": i, "status": decoded_or_none(s) or "gone"} for i, s in zip(ids, raw, strict=True)],
        "after_any": bool(job.allow_dependency_failures),
        "batches": sorted({b for b in _batches_of(connection, ids) if b}),
    }


def _batches_of(connection: redis.Redis, job_ids: Sequence[str]) -> list[str | None]:
    with connection.pipeline(transaction=False) as pipe:
        for job_id in job_ids[:1000]:
            pipe.hget(Job.key_for(job_id), "group_id")
        return [decoded_or_none(g) for g in pipe.execute()]


def cancel_in(pipe: Any, job: Job, reason: str) -> None:
    """Queue on ``pipe`` (in MULTI) the cancel of a deferred or new ``job`` with ``reason``: the
    canceled registry, the reason in its meta, its end counted in its batch."""
    DeferredJobRegistry(job.origin, connection=job.connection, serializer=SERIALIZER).remove(job, pipeline=pipe)
    job.meta[REASON] = reason
    job.set_status(JobStatus.CANCELED, pipeline=pipe)
    pipe.hset(job.key, "meta", rq_compat.serialized_meta(job))
    CanceledJobRegistry(job.origin, connection=job.connection, serializer=SERIALIZER).add(job, pipeline=pipe)
    batches.record_end(pipe, job, "failed", detail=reason)


def settle(connection: redis.Redis, job_id: str) -> None:
    """After ``job_id`` ended, whatever the way: enqueue its deferred dependents once all they wait
    for has ended as they asked (finished; or ended at all, with ``after_any``), and cancel (with the
    reason, down the chain) those that needed it to finish. Each dependent is decided under WATCH,
    so a dependent that another settle (another dependency's end) decided meanwhile is left alone."""
    pending, seen = [job_id], set()
    while pending:
        parent = pending.pop()
        if parent in seen:
            continue
        seen.add(parent)
        for dependent in decoded_members(connection.smembers(Job.dependents_key_for(parent))):
            if _settle_one(connection, dependent) == JobStatus.CANCELED:
                pending.append(dependent)


def settle_safely(connection: redis.Redis, job_id: str) -> None:
    """:func:`settle`, logging instead of raising: a job's end is never undone by its dependents."""
    try:
        settle(connection, job_id)
    except Exception:
        log.exception("could not settle the jobs waiting for job %s", job_id)


def _settle_one(connection: redis.Redis, dependent_id: str) -> JobStatus | None:
    """Decide one deferred dependent: the status it was given (CANCELED, QUEUED) or None (left).

    The dependent's hash and those of all it waits for are WATCHed before they are read, and the
    decision is written only while the dependent is still deferred: of two ends deciding it at the
    same instant, one transaction fails and its retry finds the dependent no longer deferred; and
    every end writes its own status before it settles, so the last of them sees all ended."""
    key = Job.key_for(dependent_id)
    with connection.pipeline() as pipe:
        while True:
            try:
                pipe.watch(key)
                if pipe.hget(key, "status") != JobStatus.DEFERRED.value.encode():
                    return None
                try:
                    job = fetch_job(connection, dependent_id)
                except UnreadableJob:
                    return None
                if job is None:
                    return None
                ids = dependency_ids(job)
                if ids:
                    pipe.watch(*[Job.key_for(i) for i in ids])
                decision = verdict(ids, statuses(connection, ids), bool(job.allow_dependency_failures))
                if decision is None:
                    return None  # waiting still: the end of the last it waits for releases it
                pipe.multi()
                if decision == "run":
                    queue = Queue(job.origin, connection=connection, serializer=SERIALIZER, job_class=CatalogueJob)
                    DeferredJobRegistry(job.origin, connection=connection, serializer=SERIALIZER).remove(
                        job, pipeline=pipe
                    )
                    for dependency in ids:  # as RQ: a released dependent is no longer a dependency's dependent
                        pipe.srem(Job.dependents_key_for(dependency), dependent_id)
                    rq_compat.enqueue_job(queue, job, pipeline=pipe, at_front=job.should_enqueue_at_front())
                    pipe.execute()
                    return JobStatus.QUEUED
                cancel_in(pipe, job, decision)
                pipe.execute()
                log.info("job %s %s", dependent_id, decision)
                return JobStatus.CANCELED
            except redis.WatchError:
                continue
