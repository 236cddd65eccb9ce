"""The Python API, for programs that produce work themselves.

import workqueue

batch = workqueue.enqueue("sleep", {"seconds": 2}, count=10)
summary = batch.wait(on_task=print, timeout=60)
print(workqueue.stats())
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from workqueue import batches, jobstats, outage, producer
from workqueue.connection import connect
from workqueue.settings import DEFAULT_QUEUE

log = logging.getLogger(__name__)


@dataclass
class Batch:
    """A batch enqueued by :func:`enqueue` or :func:`enqueue_many`."""

    id: str
    queue: str
    job_ids: list[str]
    connection: redis.Redis
    #: The data mark seen before enqueueing: a Redis that restarted empty is told from a lost batch.
    mark: outage.DataMark | None = field(default=None, repr=False)

    def wait(
        self,
        *,
        on_task: Callable[[batches.TaskEnd], Any] | None = None,
        on_done: Callable[[batches.BatchSummary], Any] | None = None,
        timeout: float | None = None,
        on_outage: Callable[[str | None], Any] | None = None,
    ) -> batches.BatchSummary:
        """Block until every task has ended (TimeoutError after ``timeout`` seconds).

        ``on_task`` is called with each task's end (job id, task, outcome, result or error,
        duration) as it happens, ``on_done`` once with the batch's summary. A Redis outage is
        waited out as the workers do: ``on_outage(what)`` when one starts, ``on_outage(None)``
        when Redis answers again (by default, a logged warning); a Redis that lost its data
        raises ``RedisLostData``.
        """
        return batches.wait(
            self.connection,
            self.id,
            on_task=on_task,
            on_done=on_done,
            timeout=timeout,
            on_outage=on_outage or _log_outage,
            mark=self.mark,
        )

    def summary(self) -> batches.BatchSummary:
        return batches.summary(self.connection, self.id)


def enqueue(
    task: str,
    params: Mapping[str, Any] | None = None,
    *,
    count: int = 1,
    queue: str = DEFAULT_QUEUE,
    retries: int | None = None,
    timeout: int | None = None,
    max_queued: int | None = None,
    redis_url: str | None = None,
    durable: bool = False,
) -> Batch:
    """Enqueue ``count`` jobs of one catalogue task as a batch (validated first; BadInput if not).
    ``durable``: return only once a replica holds them (``WAIT 1``), NotDurable if none does."""
    call = producer.TaskCall.build(task, params, retries=retries, timeout=timeout)
    return _submit([call] * count, queue, max_queued, redis_url, durable)


def enqueue_many(
    tasks: Iterable[tuple[str, Mapping[str, Any]]],
    *,
    queue: str = DEFAULT_QUEUE,
    max_queued: int | None = None,
    redis_url: str | None = None,
    durable: bool = False,
) -> Batch:
    """Enqueue several ``(task, params)`` as one batch, every one validated before any is enqueued."""
    calls = [producer.TaskCall.build(name, params) for name, params in tasks]
    return _submit(calls, queue, max_queued, redis_url, durable)


def stats(queue: str | None = None, *, redis_url: str | None = None) -> list[jobstats.QueueStats]:
    """Per queue and per task: enqueued, finished, failed, running, throughput, wait and run times."""
    connection, _ = connect(redis_url)
    return jobstats.collect(connection, [queue] if queue else None)


def _submit(
    calls: list[producer.TaskCall], queue: str, max_queued: int | None, redis_url: str | None, durable: bool = False
) -> Batch:
    connection, _ = connect(redis_url)
    mark = outage.DataMark(connection)
    submission = producer.enqueue(connection, calls, queue, max_queued=max_queued, durable=durable)
    return Batch(submission.batch_id, queue, [job.id for job in submission.jobs], connection, mark)


def _log_outage(what: str | None) -> None:
    if what is None:
        log.info("Redis answers again; still waiting for the batch")
    else:
        log.warning("%s; waiting for it", what)
