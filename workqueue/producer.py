"""Enqueueing catalogue tasks (one, many, from a file) and following them until they end.

Everything is validated before anything is written, and many jobs go to Redis in one pipelined
round trip, so a run enqueues all of its jobs or none.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from rq import Queue, Retry
from rq.job import Job
from rq.queue import EnqueueData

import task_def
from workqueue import backlog, batches, jobstats, outage
from workqueue.connection import without_retries
from workqueue.errors import BadInput, RedisUnavailable
from workqueue.jobs import SERIALIZER, CatalogueJob, check_queue_name
from workqueue.settings import (
    DEFAULT_QUEUE,
    FAILURE_TTL,
    MAX_COUNT,
    MAX_PARAMS_BYTES,
    MAX_RETRIES,
    MAX_TIMEOUT,
    RESULT_TTL,
)


@dataclass(frozen=True)
class TaskCall:
    """A task and its validated parameters, ready to enqueue."""

    task: task_def.Task
    params: dict[str, Any]
    #: Per-enqueue overrides of the task's retries and timeout (seconds).
    retries: int | None = None
    timeout: int | None = None

    @classmethod
    def build(
        cls,
        task_name: str,
        params: Mapping[str, Any] | None = None,
        *,
        retries: int | None = None,
        timeout: int | None = None,
        strict: bool = False,
    ) -> TaskCall:
        """Validate ``task_name`` and ``params`` against the catalogue; raises BadInput. ``strict``:
        numbers must be JSON numbers, not text (for the HTTP API, whose schema says so)."""
        if retries is not None and not 0 <= retries <= MAX_RETRIES:
            raise BadInput(f"retries: {retries} is out of bounds, expected 0 <= retries <= {MAX_RETRIES}", "retries")
        if timeout is not None and not 1 <= timeout <= MAX_TIMEOUT:
            raise BadInput(
                f"timeout: {timeout} is out of bounds, expected 1 <= timeout <= {MAX_TIMEOUT:,} seconds", "timeout"
            )
        try:
            task = task_def.get_task(task_name)
            values = task.validate(params or {}, strict)
        except task_def.TaskDefError as exc:
            raise BadInput(str(exc), f"params.{exc.field}" if exc.field else "task") from None
        size = len(json.dumps(values))
        if size > MAX_PARAMS_BYTES:
            raise BadInput(
                f"{task.name}: parameters are {size:,} bytes of JSON, over the {MAX_PARAMS_BYTES:,} limit", "params"
            )
        return cls(task, values, retries, timeout)

    def job_timeout(self) -> int:
        return self.timeout or self.task.job_timeout(self.params)

    def retry(self) -> Retry | None:
        """RQ's Retry for this call: exponential backoff from the task's first wait, with jitter."""
        count = self.task.retries if self.retries is None else self.retries
        if count <= 0:
            return None
        waits = [max(1, round(self.task.backoff * 2**i * random.uniform(0.5, 1.5))) for i in range(count)]
        return Retry(max=count, interval=waits)

    def describe(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{self.task.name}({args})"


def parse_param_pairs(pairs: Iterable[str]) -> dict[str, str]:
    """``["seconds=2", ...]`` as a dict; raises BadInput on a pair without '='."""
    params: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise BadInput(f"--param {pair!r}: expected KEY=VALUE, e.g. --param seconds=2")
        params[key.strip()] = value
    return params


def load_calls(path: Path, *, retries: int | None = None, timeout: int | None = None) -> list[TaskCall]:
    """Every line of a JSON-lines file (``{"task": ..., "params": {...}}``), validated whole."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror}") from None
    calls = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BadInput(f"{path}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("task"), str):
            raise BadInput(f'{path}:{number}: expected {{"task": NAME, "params": {{...}}}}')
        if not isinstance(entry.get("params", {}), dict) or set(entry) - {"task", "params"}:
            raise BadInput(f'{path}:{number}: expected {{"task": NAME, "params": {{...}}}} and nothing else')
        try:
            calls.append(TaskCall.build(entry["task"], entry.get("params"), retries=retries, timeout=timeout))
        except BadInput as exc:
            raise BadInput(f"{path}:{number}: {exc}") from None
    if not calls:
        raise BadInput(f"{path}: no tasks in the file")
    return calls


@dataclass
class Submission:
    """What one producer run enqueued: a batch of jobs on a queue."""

    batch_id: str
    queue: str
    jobs: list[Job]


def enqueue(
    connection: redis.Redis,
    calls: list[TaskCall],
    queue: str = DEFAULT_QUEUE,
    *,
    max_queued: int | None = None,
    on_wait: Callable[[int], Any] | None = None,
    batch_id: str | None = None,
) -> Submission:
    """Enqueue every call on ``queue`` as one batch.

    Without ``max_queued``: one pipelined transaction, so all of them or none. With it, the jobs go
    in as the queue has room, never taking it past ``max_queued`` (``on_wait(queued)`` is called
    while the producer waits for consumers to drain it). ``batch_id`` lets a caller that must
    record something about the batch first (the gateway, its callback) choose the id.
    """
    check_queue_name(queue)
    if not 1 <= len(calls) <= MAX_COUNT:
        raise BadInput(f"between 1 and {MAX_COUNT:,} jobs may be enqueued at once, not {len(calls):,}", "count")
    if max_queued is not None and max_queued < 1:
        raise BadInput(f"max_queued must be at least 1, not {max_queued}")
    q = Queue(queue, connection=connection, serializer=SERIALIZER, job_class=CatalogueJob)
    batch_id = batch_id or batches.new_id()
    group = batches.group(connection, batch_id)
    pending = [_prepare(call) for call in calls]
    names = [call.task.name for call in calls]
    jobs: list[Job] = []
    try:
        while pending:
            room = len(pending) if max_queued is None else _wait_for_room(connection, q, max_queued, on_wait)
            chunk, pending = pending[:room], pending[room:]
            chunk = backlog.with_ids(chunk)  # known before the transaction, which counts them in the backlog
            chunk_names, names = names[:room], names[room:]
            with connection.pipeline(transaction=True) as pipe:
                if not jobs:
                    batches.open_batch(pipe, batch_id, len(calls), queue)
                jobstats.count_enqueued(pipe, queue, Counter(chunk_names))
                backlog.add(pipe, queue, [data.job_id for data in chunk])
                jobs += group.enqueue_many(q, chunk, pipeline=pipe)  # RQ executes the transaction here
    except redis.RedisError as exc:
        if not outage.is_outage(exc):
            raise
        raise _unavailable(connection, exc, jobs, len(calls), batch_id, chunked=max_queued is not None) from None
    return Submission(batch_id, queue, jobs)


def _prepare(call: TaskCall) -> EnqueueData:
    """What RQ needs to enqueue ``call`` as one job of a batch."""
    return Queue.prepare_data(
        call.task.func,
        kwargs=call.params,
        timeout=call.job_timeout(),
        retry=call.retry(),
        result_ttl=RESULT_TTL,
        failure_ttl=FAILURE_TTL,
        description=call.describe(),
        meta={"task": call.task.name},
        **batches.callbacks(),
    )


def _unavailable(
    connection: redis.Redis, exc: redis.RedisError, jobs: list[Job], count: int, batch_id: str, *, chunked: bool
) -> RedisUnavailable:
    """The error for an outage in the middle of ``enqueue``, saying which of its jobs landed."""
    if chunked:
        landed = f"{len(jobs)} of {count} jobs were enqueued before it did (batch {batch_id})"
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
        queued = connection.llen(queue.key)
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
