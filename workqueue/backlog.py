"""Each queue's backlog as one Redis key, for autoscalers that read a key's length.

KEDA's Redis scaler reads one key's length (LLEN, or ZCARD for a sorted set) every 30 s. RQ's queue
list holds only the jobs waiting: scaled on it, the pods of busy workers are the first to go. So
each queue has ``workqueue:backlog:<queue>``, a sorted set of the ids of its jobs that have not
ended, scored by when they entered it (epoch seconds):

- added when a job is enqueued (``producer.enqueue``, in the transaction that enqueues it, so a
  job is never running before it is counted) and when a failed or cancelled job is requeued;
- removed at the job's end, in the same atomic step that records it (``batches.record_end``:
  finished, failed for good, stopped, cancelled, failed by a sweep), and when a job is deleted.

So its length is the jobs waiting + running + held back: a retry waiting out its backoff
(scheduled), a job enqueued to run later (``--in``/``--at``, scheduled) or after others
(``--after``, deferred), and a paused queue's or a limited key's waiting jobs all count, from
their enqueue to their end. Taking a job (the claim) and handing a dead worker's job back to its
queue do not change it. ``/metrics`` serves the same figure as ``workqueue_queue_backlog{queue}``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable

import redis
from rq.job import Job
from rq.queue import EnqueueData

PREFIX = "workqueue:backlog:"


def key(queue: str) -> str:
    """The key whose length is ``queue``'s backlog (KEDA's ``listName``)."""
    return PREFIX + queue


def with_ids(data: list[EnqueueData]) -> list[EnqueueData]:
    """``data`` with a job id each (RQ's own form), so that the transaction enqueueing them can
    count them in the backlog too."""
    return [d if d.job_id else d._replace(job_id=str(uuid.uuid4())) for d in data]


def add(pipe: redis.Redis | redis.client.Pipeline, queue: str, job_ids: Iterable[str]) -> None:
    """Count ``job_ids`` in ``queue``'s backlog (queued on ``pipe``)."""
    now = time.time()
    members = {job_id: now for job_id in job_ids}
    if members:
        pipe.zadd(key(queue), members)


def forget(pipe: redis.Redis | redis.client.Pipeline, job: Job) -> None:
    """Take ``job`` out of its queue's backlog: it ended, or was deleted (queued on ``pipe``)."""
    if job.origin:
        pipe.zrem(key(job.origin), job.id)


def count(connection: redis.Redis, queues: Iterable[str]) -> dict[str, int]:
    """Each queue's backlog, in one round trip."""
    names = list(queues)
    with connection.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.zcard(key(name))
        return dict(zip(names, pipe.execute(), strict=True))
