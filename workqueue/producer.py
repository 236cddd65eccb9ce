"""Enqueueing catalogue tasks (one, many, from a file) and following them until they end.

Everything is validated before anything is written, and many jobs go to Redis in one pipelined
round trip, so a run enqueues all of its jobs or none.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import redis
from rq import Queue, Retry
from rq.job import Job, JobStatus

import task_def
from workqueue.connection import without_retries
from workqueue.errors import BadInput, RedisUnavailable
from workqueue.policy import SERIALIZER, CatalogueJob, check_queue_name
from workqueue.settings import DEFAULT_QUEUE, FAILURE_TTL, MAX_COUNT, RESULT_TTL

#: Largest JSON size of one job's parameters, in bytes.
MAX_PARAMS_BYTES = 1_000_000

#: Bounds of the per-enqueue overrides.
MAX_RETRIES, MAX_TIMEOUT = 20, 7 * 24 * 3600

_ENDED_FAILED = {JobStatus.FAILED.value, JobStatus.STOPPED.value, JobStatus.CANCELED.value}


@dataclass(frozen=True)
class TaskCall:
    """A task and its validated parameters, ready to enqueue."""

    task: task_def.Task
    params: dict[str, Any]
    #: Per-enqueue overrides of the task's retries and timeout (seconds).
    retries: Optional[int] = None
    timeout: Optional[int] = None

    @classmethod
    def build(cls, task_name: str, params: Optional[Mapping[str, Any]] = None, *,
              retries: Optional[int] = None, timeout: Optional[int] = None) -> "TaskCall":
        """Validate ``task_name`` and ``params`` against the catalogue; raises BadInput."""
        if retries is not None and not 0 <= retries <= MAX_RETRIES:
            raise BadInput(f"retries: {retries} is out of bounds, expected 0 <= retries <= {MAX_RETRIES}")
        if timeout is not None and not 1 <= timeout <= MAX_TIMEOUT:
            raise BadInput(f"timeout: {timeout} is out of bounds, expected 1 <= timeout <= {MAX_TIMEOUT:,} seconds")
        try:
            task = task_def.get_task(task_name)
            values = task.validate(params or {})
        except task_def.TaskDefError as exc:
            raise BadInput(str(exc)) from None
        size = len(json.dumps(values))
        if size > MAX_PARAMS_BYTES:
            raise BadInput(f"{task.name}: parameters are {size:,} bytes of JSON, over the {MAX_PARAMS_BYTES:,} limit")
        return cls(task, values, retries, timeout)

    def job_timeout(self) -> int:
        return self.timeout or self.task.job_timeout(self.params)

    def retry(self) -> Optional[Retry]:
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


def load_calls(path: Path) -> list[TaskCall]:
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
            calls.append(TaskCall.build(entry["task"], entry.get("params")))
        except BadInput as exc:
            raise BadInput(f"{path}:{number}: {exc}") from None
    if not calls:
        raise BadInput(f"{path}: no tasks in the file")
    return calls


def enqueue(connection: redis.Redis, calls: list[TaskCall], queue: str = DEFAULT_QUEUE) -> list[Job]:
    """Enqueue every call on ``queue`` in one pipelined round trip: all of them or none."""
    check_queue_name(queue)
    if not 1 <= len(calls) <= MAX_COUNT:
        raise BadInput(f"between 1 and {MAX_COUNT:,} jobs may be enqueued at once, not {len(calls):,}")
    q = Queue(queue, connection=connection, serializer=SERIALIZER, job_class=CatalogueJob)
    datas = [
        Queue.prepare_data(
            call.task.func,
            kwargs=call.params,
            timeout=call.job_timeout(),
            retry=call.retry(),
            result_ttl=RESULT_TTL,
            failure_ttl=FAILURE_TTL,
            description=call.describe(),
            meta={"task": call.task.name},
        )
        for call in calls
    ]
    jobs: list[Job] = []
    try:
        with connection.pipeline(transaction=True) as pipe:
            jobs = q.enqueue_many(datas, pipeline=pipe)
            pipe.execute()
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise RedisUnavailable(f"Redis went away while enqueueing ({exc}); {_which_landed(connection, jobs)}") from None
    return jobs


def _which_landed(connection: redis.Redis, jobs: list[Job]) -> str:
    """All or none of a transaction's jobs landed: say which, if Redis answers again to tell."""
    if not jobs:
        return "nothing was enqueued"
    try:
        landed = without_retries(connection).exists(jobs[0].key)
    except redis.RedisError:
        return f"the {len(jobs)} jobs were sent in one transaction, so all or none were enqueued (check job {jobs[0].id})"
    return f"all {len(jobs)} jobs were enqueued" if landed else "nothing was enqueued"


@dataclass
class Tally:
    """Where a set of jobs stands while it is followed."""

    total: int
    finished: int = 0
    failed: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    @property
    def ended(self) -> int:
        return self.finished + len(self.failed)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


def follow(
    connection: redis.Redis, job_ids: list[str], interval: float = 0.25, timeout: Optional[float] = None
) -> Iterator[Tally]:
    """Yield the tally after each poll until every job has ended (or ``timeout`` seconds pass)."""
    tally = Tally(total=len(job_ids))
    pending = list(job_ids)
    while pending:
        with connection.pipeline(transaction=False) as pipe:
            for job_id in pending:
                pipe.hget(Job.key_for(job_id), "status")
            statuses = pipe.execute()
        still = []
        for job_id, status in zip(pending, statuses):
            status = status.decode() if status else None
            if status == JobStatus.FINISHED.value:
                tally.finished += 1
            elif status in _ENDED_FAILED or status is None:
                tally.failed.append(job_id)
            else:
                still.append(job_id)
        pending = still
        yield tally
        if pending:
            if timeout is not None and tally.elapsed > timeout:
                return
            time.sleep(interval)


def failure_reasons(connection: redis.Redis, job_ids: list[str]) -> dict[str, str]:
    """The last line of each failed job's error (or why it has none), by job id."""
    reasons = {}
    for job_id, job in zip(job_ids, Job.fetch_many(job_ids, connection=connection, serializer=SERIALIZER)):
        if job is None:
            reasons[job_id] = "the job no longer exists in Redis"
            continue
        result = job.latest_result()
        text = (result.exc_string or "") if result is not None else ""
        lines = [line for line in text.strip().splitlines() if line.strip()]
        reasons[job_id] = lines[-1] if lines else f"ended {job.get_status(refresh=False)}"
    return reasons
