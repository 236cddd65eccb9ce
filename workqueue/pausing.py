"""Pausing one queue: workers on every machine take no new job from it until it is resumed.

The paused queues are a set in Redis (:data:`PAUSED_KEY`), which the claim script (``lua/claim.lua``)
reads in the same call that takes a job, so a pause holds for every worker at its next claim; a
resume is published, and wakes idle workers to look at once. Jobs already running
finish; producers still enqueue. RQ's ``rq suspend`` (every worker, every queue) is separate and
holds whatever this says.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from rq import Queue

from workqueue import priorities
from workqueue.errors import BadInput, WorkqueueError
from workqueue.jobs import check_queue_name

#: The set of paused queue names (``lua/claim.lua`` reads the same key).
PAUSED_KEY = "workqueue:paused"
#: Published to on each resume (the queue's name): a worker whose queues are all paused sleeps until
#: it hears one (``worker.claiming``), at most its look gap, and one waiting on another queue looks.
WAKE_CHANNEL = "workqueue:wake"


class QueueStateConflict(BadInput):
    """Raised when a queue already is what it was asked to become (paused twice, resumed while running)."""


class DrainTimeout(WorkqueueError):
    """Raised when ``drain`` gave up before the queue was empty and idle."""


def pause(connection: redis.Redis, queue: str) -> None:
    """Pause ``queue``; raises QueueStateConflict if it already is."""
    check_queue_name(queue)
    if not connection.sadd(PAUSED_KEY, queue):
        raise QueueStateConflict(f"queue {queue} is already paused (resume it with: queue resume {queue})", "queue")


def resume(connection: redis.Redis, queue: str) -> None:
    """Resume ``queue``; raises QueueStateConflict if it was not paused. Workers that sleep because
    all their queues are paused are woken at once (:data:`WAKE_CHANNEL`), not at their next look."""
    check_queue_name(queue)
    if not connection.srem(PAUSED_KEY, queue):
        raise QueueStateConflict(f"queue {queue} is not paused (pause it with: queue pause {queue})", "queue")
    connection.publish(WAKE_CHANNEL, queue)


def paused_names(connection: redis.Redis) -> set[str]:
    """The names of every paused queue."""
    return {n.decode(errors="replace") if isinstance(n, bytes) else n for n in connection.smembers(PAUSED_KEY)}


def is_paused(connection: redis.Redis, queue: str) -> bool:
    return bool(connection.sismember(PAUSED_KEY, queue))


@dataclass(frozen=True)
class Backlog:
    """What ``drain`` waits for: jobs of a queue waiting (every level) and running."""

    waiting: int
    running: int

    @property
    def left(self) -> int:
        return self.waiting + self.running


def backlog(connection: redis.Redis, queue: str) -> Backlog:
    """``queue``'s jobs waiting (every level, and any a worker took but has not started) and running."""
    q = Queue(queue, connection=connection)
    with connection.pipeline(transaction=False) as pipe:
        pipe.llen(q.intermediate_queue_key)
        pipe.zcard(q.started_job_registry.key)
        taken, running = pipe.execute()
    return Backlog(priorities.waiting(connection, queue) + taken, running)


def drain(
    connection: redis.Redis,
    queue: str,
    timeout: float | None = None,
    on_progress: Callable[[Backlog], Any] | None = None,
    poll: float = 0.2,
) -> None:
    """Wait until ``queue`` holds no waiting job and none of its jobs runs; ``on_progress`` is called
    with each reading. Raises DrainTimeout after ``timeout`` seconds (None: no bound)."""
    check_queue_name(queue)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        now = backlog(connection, queue)
        if on_progress is not None:
            on_progress(now)
        if now.left == 0:
            return
        if deadline is not None and time.monotonic() >= deadline:
            raise DrainTimeout(
                f"queue {queue} still has {now.waiting} waiting and {now.running} running after {timeout:g} s"
            )
        time.sleep(poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic())))
