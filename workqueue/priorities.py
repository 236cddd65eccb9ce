"""Priorities inside a queue: levels 0 to 9, higher first, first in first out within a level.

A queue's normal-priority jobs (level 5, the default) stay in RQ's own list, ``rq:queue:Q``, so a
job enqueued without a priority is exactly what it was before and RQ's tools still see it. Each
other level has a list of its own beside it (:func:`key`); the claim script (``lua/claim.lua``)
takes from them highest level first, in the same single call that starts the job.

Every enqueue of a job with a level, whoever makes it (the producer, RQ's scheduler for delayed
jobs and retries, a dependency that ended, a requeue, the hand-back of a dead worker's job), ends in
the same step of RQ's: :func:`install` routes it to the job's level there (``rq_compat.route_enqueue``),
so a job keeps its level all its life. The level is kept in the job's meta (``meta["priority"]``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import redis
from rq import Queue
from rq.job import Job
from rq.results import Result

from workqueue import bells, lua, rq_compat
from workqueue.errors import BadInput

#: The named levels and the number each stands for (0 to 9, higher first).
LEVELS: dict[str, int] = {"low": 2, "normal": 5, "high": 7, "urgent": 9}
NORMAL = LEVELS["normal"]
LOWEST, HIGHEST = 0, 9
#: Each level's list but normal's: ``workqueue:priority:<queue>:<level>`` (``lua/claim.lua`` says the same).
KEY_PREFIX = "workqueue:priority:"
_META = "priority"


def parse(value: Any) -> int:
    """A level from its name (``high``) or number (``0``-``9``); raises BadInput saying what is allowed."""
    if isinstance(value, bool):
        value = str(value)
    if isinstance(value, int):
        level = value
    else:
        text = str(value).strip().lower()
        if text in LEVELS:
            return LEVELS[text]
        try:
            level = int(text)
        except ValueError:
            raise BadInput(f"priority {value!r}: use one of {describe_levels()}, or a number 0-9", "priority") from None
    if not LOWEST <= level <= HIGHEST:
        raise BadInput(f"priority {value!r}: a number must be 0-9 (higher runs first)", "priority")
    return level


def describe_levels() -> str:
    """``low (2), normal (5), high (7), urgent (9)``: the named levels, for help and errors."""
    return ", ".join(f"{name} ({number})" for name, number in LEVELS.items())


def name(level: int) -> str:
    """A level as people read it: its name if it has one, else its number."""
    for text, number in LEVELS.items():
        if number == level:
            return text
    return str(level)


def key(queue: str, level: int) -> str:
    """The list holding ``queue``'s waiting jobs of ``level`` (RQ's own list for normal)."""
    if level == NORMAL:
        return Queue.redis_queue_namespace_prefix + queue
    return f"{KEY_PREFIX}{queue}:{level}"


def levels() -> list[int]:
    """Every level, in the order the claim takes them (highest first)."""
    return list(range(HIGHEST, LOWEST - 1, -1))


def level_of(job: Job) -> int:
    """The job's level (normal for a job enqueued without one, or with a level no longer valid)."""
    value = job.meta.get(_META, NORMAL) if isinstance(job.meta, dict) else NORMAL
    return value if isinstance(value, int) and LOWEST <= value <= HIGHEST else NORMAL


def meta(level: int) -> dict[str, int]:
    """What a job's meta holds for ``level`` (nothing for normal: such a job is as it always was)."""
    return {} if level == NORMAL else {_META: level}


def counts(connection: redis.Redis, queues: Iterable[str]) -> dict[str, dict[int, int]]:
    """Waiting jobs of each queue per level (levels holding none left out), in one round trip."""
    names = list(queues)
    with connection.pipeline(transaction=False) as pipe:
        for queue in names:
            for level in levels():
                pipe.llen(key(queue, level))
        replies = pipe.execute()
    per_queue: dict[str, dict[int, int]] = {}
    for index, queue in enumerate(names):
        lengths = replies[index * len(levels()) : (index + 1) * len(levels())]
        per_queue[queue] = {level: n for level, n in zip(levels(), lengths, strict=True) if n}
    return per_queue


def waiting(connection: redis.Redis, queue: str) -> int:
    """How many jobs wait on ``queue``, every level counted."""
    return sum(counts(connection, [queue])[queue].values())


def waiting_ids(connection: redis.Redis, queue: str, offset: int = 0, length: int = -1) -> list[str]:
    """The ids of ``queue``'s waiting jobs in the order workers take them (highest level first);
    ``offset``/``length`` as RQ's ``Queue.get_job_ids``. Only the asked-for slice of each level is
    read: a dashboard page of a deep queue used to read every id of every level (26.8 ms at 100,000)."""
    lists = [key(queue, level) for level in levels()]
    with connection.pipeline(transaction=False) as pipe:
        for name in lists:
            pipe.llen(name)
        sizes = pipe.execute()
    ids: list[str] = []
    skip, left = max(0, offset), None if length < 0 else length
    for name, size in zip(lists, sizes, strict=True):
        if left == 0:
            break
        if skip >= size:
            skip -= size
            continue
        part = connection.lrange(name, skip, -1 if left is None else skip + left - 1)
        ids += [i.decode() if isinstance(i, bytes) else i for i in part]
        skip = 0
        if left is not None:
            left = max(0, left - len(part))
    return ids


def home(connection: redis.Redis, queue: str, job_id: str) -> str:
    """The list a waiting job of ``queue`` belongs in, by the level in its meta (RQ's own list for a
    job without one, or whose meta is not JSON)."""
    raw = connection.hget(Job.key_for(job_id), "meta")
    try:
        value = json.loads(raw).get(_META, NORMAL) if raw else NORMAL
    except (ValueError, AttributeError):
        value = NORMAL
    return key(queue, value if isinstance(value, int) and LOWEST <= value <= HIGHEST else NORMAL)


def remove(pipe: Any, queue: str, job_id: str) -> None:
    """Queue on ``pipe`` the removal of ``job_id`` from every non-normal level list of ``queue``
    (RQ's own ``Queue.remove`` covers the normal one)."""
    for level in levels():
        if level != NORMAL:
            pipe.lrem(key(queue, level), 0, job_id)


def delete_lists(pipe: Any, queue: str) -> None:
    """Queue on ``pipe`` the deletion of ``queue``'s non-normal level lists (emptying the queue)."""
    pipe.delete(*[key(queue, level) for level in levels() if level != NORMAL])


def push(pipe: Any, queue: str, job_id: str, level: int, at_front: bool = False) -> None:
    """Queue on ``pipe`` the push of ``job_id`` onto ``queue``'s list for ``level``."""
    (pipe.lpush if at_front else pipe.rpush)(key(queue, level), job_id)


_installed = False


def install() -> None:
    """Route every enqueue of a job with a level to that level's list (idempotent; called where
    ``rq_compat.install`` is, and by the producer). A job without a level takes RQ's own path."""
    global _installed
    if _installed:
        return
    rq_compat.route_enqueue(
        lambda job: level_of(job) != NORMAL,
        lambda pipe, queue, job, at_front: push(pipe, queue.name, job.id, level_of(job), at_front),
        lambda pipe, queue, job: bells.ring(pipe, queue.name, level_of(job) != NORMAL),
    )
    _install_readers()
    _installed = True


def _install_readers() -> None:
    """RQ's ``Queue.count``, ``get_job_ids``, ``remove`` and ``empty`` over every level, so whatever looks
    at a queue's waiting jobs through RQ (rq-dashboard, cancel, delete, empty) sees them all."""
    original_remove, original_empty = Queue.remove, Queue.empty

    def count(self: Queue) -> int:
        return waiting(self.connection, self.name)

    def get_job_ids(self: Queue, offset: int = 0, length: int = -1) -> list[str]:
        return [] if length == 0 else waiting_ids(self.connection, self.name, offset, length)

    def remove_(self: Queue, job_or_id: Job | str, pipeline: Any = None) -> Any:
        job_id = job_or_id.id if isinstance(job_or_id, Job) else job_or_id
        level = level_of(job_or_id) if isinstance(job_or_id, Job) else None
        if level == NORMAL:
            return original_remove(self, job_or_id, pipeline=pipeline)
        if pipeline is not None:
            original_remove(self, job_or_id, pipeline=pipeline)
            return remove(pipeline, self.name, job_id)
        with self.connection.pipeline() as pipe:
            original_remove(self, job_or_id, pipeline=pipe)
            remove(pipe, self.name, job_id)
            return sum(pipe.execute())

    def empty(self: Queue) -> int:
        lists = [key(self.name, level) for level in levels() if level != NORMAL]
        args = [self.job_class.redis_job_namespace_prefix, Result.get_key("")]
        return int(original_empty(self)) + int(
            self.connection.eval(lua.script("priority_empty"), len(lists), *lists, *args)
        )

    Queue.empty = empty  # type: ignore[method-assign]
    Queue.count = property(count)  # type: ignore[assignment,method-assign]
    Queue.get_job_ids = get_job_ids  # type: ignore[method-assign]
    Queue.remove = remove_  # type: ignore[method-assign]
