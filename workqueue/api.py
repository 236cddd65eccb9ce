"""The Python API, for programs that produce work themselves.

import workqueue

batch = workqueue.enqueue("sleep", {"seconds": 2}, count=10)
summary = batch.wait(on_task=print, timeout=60)
print(workqueue.stats())
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import redis

from workqueue import batches, crawling, jobstats, limits, outage, producer, schedules, timing
from workqueue.connection import shared
from workqueue.errors import BadInput
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
    #: Unique jobs: the jobs already queued or running that calls found holding their key (so
    #: ``job_ids`` has only the new ones), by the call's position.
    existing: dict[int, str] = field(default_factory=dict)

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

    def results(self) -> list[dict[str, Any]]:
        """Each crawled page's result (url, depth, status, title, links, error), as they ended."""
        return crawling.results(self.connection, self.id)


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
    when: datetime | None = None,
    delay: timedelta | float | None = None,
    after: After = None,
    after_any: bool = False,
    unique: bool = False,
    unique_key: str | None = None,
    unique_for: int | str | None = None,
    priority: int | str | None = None,
    limit_key: str | None = None,
    durable: bool = False,
    result_ttl: int | str | None = None,
) -> Batch:
    """Enqueue ``count`` jobs of one catalogue task as a batch (validated first; BadInput if not).

    ``when`` (a datetime; naive is local time) or ``delay`` (a timedelta or seconds): run then, not
    now. ``after``: a Batch, a job id, a batch id or a list of them: run once they have all ended,
    if they all finished (else the jobs are cancelled with the reason); ``after_any``: whatever
    their outcome. So ``report = enqueue(..., after=enqueue(..., after=crawl))`` chains work.

    ``unique`` (the key is the task and its parameters) or ``unique_key``: while a job with that key
    waits or runs (and ``unique_for`` seconds, or ``"10m"``, after its end) no new one is made; the
    batch's ``existing`` names the job found instead.

    ``priority``: a level inside the queue, ``"low"``, ``"normal"`` (default), ``"high"``,
    ``"urgent"`` or 0-9, higher first (``workqueue.priorities``). ``limit_key``: the jobs' per-key
    limit key (default: the task's own, see :func:`set_limit`). ``durable``: return only once a
    replica holds them (``WAIT 1``), NotDurable if none does. ``result_ttl``: how long each finished
    job and its result stay in Redis, seconds or ``"10m"`` (0 to 30 days; default the task's, else a day).
    """
    call = producer.TaskCall.build(
        task, params, retries=retries, timeout=timeout, unique=unique, unique_key=unique_key, unique_for=unique_for,
        priority=priority, limit_key=limit_key, result_ttl=result_ttl,
    )  # fmt: skip
    return _submit([call] * count, queue, max_queued, redis_url, _Later.of(when, delay, after, after_any), durable)


def enqueue_many(
    tasks: Iterable[tuple[str, Mapping[str, Any]]],
    *,
    queue: str = DEFAULT_QUEUE,
    max_queued: int | None = None,
    redis_url: str | None = None,
    when: datetime | None = None,
    delay: timedelta | float | None = None,
    after: After = None,
    after_any: bool = False,
    priority: int | str | None = None,
    limit_key: str | None = None,
    durable: bool = False,
    result_ttl: int | str | None = None,
) -> Batch:
    """Enqueue several ``(task, params)`` as one batch, every one validated before any is enqueued
    (``when``, ``delay``, ``after``, ``after_any``: as :func:`enqueue`; ``priority``, ``limit_key`` and
    ``result_ttl``: as its, for all of them; ``durable``: as its)."""
    calls = [
        producer.TaskCall.build(name, params, priority=priority, limit_key=limit_key, result_ttl=result_ttl)
        for name, params in tasks
    ]
    return _submit(calls, queue, max_queued, redis_url, _Later.of(when, delay, after, after_any), durable)


def results(batch_id: str, *, redis_url: str | None = None) -> list[dict[str, Any]]:
    """Each crawled page's result in batch ``batch_id`` (kept for a day, at most 20,000 pages)."""
    connection, _ = shared(redis_url)
    return crawling.results(connection, batch_id)


def stats(queue: str | None = None, *, redis_url: str | None = None) -> list[jobstats.QueueStats]:
    """Per queue and per task: enqueued, finished, failed, running, throughput, wait and run times."""
    connection, _ = shared(redis_url)
    return jobstats.collect(connection, [queue] if queue else None)


# -- Per-key limits (workqueue.limits) -------------------------------------------------------------


def set_limit(
    key: str, *, rate: str | None = None, concurrency: int | None = None, redis_url: str | None = None
) -> limits.Rule:
    """Limit the jobs of ``key`` (or of each key matching a pattern such as ``domain:*``) to ``rate``
    starts (``"2/s"``, ``"30/m"``) and ``concurrency`` at once; BadInput for a malformed one."""
    rule = limits.make_rule(key, rate, concurrency)
    connection, _ = shared(redis_url)
    limits.set_rule(connection, rule)
    return rule


def remove_limit(key: str, *, redis_url: str | None = None) -> limits.Rule:
    """Remove the limit set on ``key`` (as given to :func:`set_limit`); BadInput if there is none."""
    connection, _ = shared(redis_url)
    return limits.remove_rule(connection, key)


def list_limits(*, redis_url: str | None = None) -> tuple[list[limits.Rule], list[limits.KeyState]]:
    """The rules, and each key in use with its limit, slots in use and jobs waiting."""
    connection, _ = shared(redis_url)
    return limits.rules(connection), limits.key_states(connection, time.time())


def _submit(
    calls: list[producer.TaskCall],
    queue: str,
    max_queued: int | None,
    redis_url: str | None,
    later: _Later,
    durable: bool = False,
) -> Batch:
    connection, _ = shared(redis_url)
    submission = producer.enqueue(
        connection, calls, queue, max_queued=max_queued, when=later.when, after=later.after,
        after_any=later.after_any, durable=durable, mark=True,
    )  # fmt: skip
    job_ids = [job.id for job in submission.jobs]
    return Batch(submission.batch_id, queue, job_ids, connection, submission.mark, submission.existing)


# -- when work runs (issue 15): when=/delay= and after=/after_any= -----------------------------------

#: What ``after=`` takes: a Batch, a job id or a batch id, or a list of them.
After = Batch | str | Sequence[Batch | str] | None


@dataclass(frozen=True)
class _Later:
    """When a batch runs, as ``producer.enqueue`` takes it."""

    when: datetime | None = None
    after: tuple[str, ...] = ()
    after_any: bool = False

    @classmethod
    def of(cls, when: datetime | None, delay: timedelta | float | None, after: After, after_any: bool) -> _Later:
        """Check and resolve the API's arguments (BadInput naming ``when``, ``delay`` or ``after``)."""
        moment = timing.resolve(when, delay, at_field="when", in_field="delay")
        items = [after] if isinstance(after, Batch | str) else list(after or [])
        ids = tuple(item.id if isinstance(item, Batch) else item for item in items)
        if after is not None and not ids:
            raise BadInput("after: expected a Batch, a job id or a batch id, or a list of them; got nothing", "after")
        if after_any and not ids:
            raise BadInput("after_any goes with after=", "after_any")
        return cls(moment, ids, after_any)


def _log_outage(what: str | None) -> None:
    if what is None:
        log.info("Redis answers again; still waiting for the batch")
    else:
        log.warning("%s; waiting for it", what)


class Schedules:
    """Periodic schedules (see ``workqueue.schedules``), fired once per tick by the running consumers::

        s = workqueue.Schedules()
        s.add("nightly", "scrape", {"url": "https://example.com/"}, cron="0 3 * * *", tz="Europe/Paris")
        s.add("warm", "sleep", {"seconds": 1}, every="10m", queue="queue_one")
        for each in s.all(): print(each.name, each.next_run(time.time()), each.last_batch)
        s.pause("warm"); s.resume("warm"); batch_id = s.run_now("warm"); s.remove("warm")

    Everything is validated first (``workqueue.errors.BadInput``, with the command line's messages).
    """

    def __init__(self, redis_url: str | None = None) -> None:
        self.connection, _ = shared(redis_url)

    def add(
        self,
        name: str,
        task: str,
        params: Mapping[str, Any] | None = None,
        *,
        cron: str | None = None,
        every: str | int | None = None,
        tz: str | None = None,
        queue: str = DEFAULT_QUEUE,
        retries: int | None = None,
        timeout: int | None = None,
        replace: bool = False,
    ) -> str:
        """Create (or with ``replace``, redefine) a schedule: "created", "replaced" or "unchanged"."""
        definition = schedules.Schedule.build(
            name, cron=cron, every=every, tz=tz, task=task, params=params, queue=queue, retries=retries, timeout=timeout
        )
        return schedules.add(self.connection, definition, replace=replace)

    def all(self) -> list[schedules.Stored]:
        """Every schedule (``schedules.Stored``: definition, paused, last run and batch, ...), by name."""
        return schedules.load_all(self.connection)

    def remove(self, name: str) -> None:
        schedules.remove(self.connection, name)

    def pause(self, name: str) -> None:
        schedules.set_paused(self.connection, name, True)

    def resume(self, name: str) -> None:
        schedules.set_paused(self.connection, name, False)

    def run_now(self, name: str) -> str:
        """Enqueue one batch of the schedule now (not a tick); its id."""
        return schedules.run_now(self.connection, name)
