"""A queued job's hash, as RQ's ``Queue.enqueue_many`` writes it, built without RQ's Job: the
producer's script enqueue (``lua/enqueue.lua``) writes these field for field. Building RQ's Job and
calling its ``to_dict`` was a third of the Python an enqueue ran; what the producer never asks for
still goes through RQ's Job (:func:`job`). ``tests/test_producer.py`` holds the two equal."""

from __future__ import annotations

import functools
import json
import zlib
from collections.abc import Callable
from typing import Any

from rq import Queue
from rq.callbacks import Callback
from rq.job import Job, JobStatus
from rq.queue import EnqueueData
from rq.utils import now, resolve_function_reference, utcformat

from workqueue import limits
from workqueue.jobs import SERIALIZER


def fields(q: Queue, data: EnqueueData, batch_id: str) -> tuple[str, dict[str, Any]]:
    """The id and hash of the job RQ's ``Queue.enqueue_many`` makes of ``data`` in group ``batch_id``, as it
    stands once queued: ``CatalogueJob.to_dict()``, field for field and in its order, without building RQ's
    Job (its construction and ``to_dict`` were a third of the Python an enqueue runs). What
    ``producer._prepare`` never asks for (positional arguments, a job TTL, dependencies, repeats, webhooks)
    goes through RQ's Job; ``tests/test_producer.py`` holds the two equal. (Nor does it ask for a push to
    the front, which is not in the hash: ``lua/enqueue.lua`` pushes to the back.)"""
    callbacks = (data.on_success, data.on_failure, data.on_stopped)
    if (
        data.args or data.ttl or data.depends_on or data.repeat or data.webhooks
        or not data.job_id or not data.description or not all(isinstance(c, Callback) for c in callbacks)
        or not all(type(n) is int for n in (data.timeout, data.result_ttl or 0, data.failure_ttl or 0))
    ):  # fmt: skip
        built = job(q, data, batch_id)
        return built.id, built.to_dict()
    created = utcformat(now())
    hashed: dict[str, Any] = {
        "created_at": created,
        "data": zlib.compress(SERIALIZER.dumps((function_name(data.func), None, (), data.kwargs or {}))),
        "success_callback_name": callbacks[0].name,
        "failure_callback_name": callbacks[1].name,
        "stopped_callback_name": callbacks[2].name,
        "started_at": "",
        "ended_at": "",
        "last_heartbeat": "",
        "worker_name": "",
        "group_id": batch_id,
    }
    if data.retry:
        hashed["retries_left"] = data.retry.max
        hashed["retry_intervals"] = json.dumps(data.retry.intervals)
        if data.retry.enqueue_at_front:
            hashed["enqueue_at_front_on_retry"] = 1
    hashed["origin"] = q.name
    hashed["description"] = data.description
    hashed["enqueued_at"] = utcformat(now())
    hashed["timeout"] = data.timeout
    hashed["success_callback_timeout"] = callbacks[0].timeout
    hashed["failure_callback_timeout"] = callbacks[1].timeout
    hashed["stopped_callback_timeout"] = callbacks[2].timeout
    if data.result_ttl is not None:
        hashed["result_ttl"] = data.result_ttl
    if data.failure_ttl is not None:
        hashed["failure_ttl"] = data.failure_ttl
    hashed["status"] = JobStatus.QUEUED
    if data.meta:
        hashed["meta"] = SERIALIZER.dumps(data.meta)
    hashed.update(limits.job_fields(data.meta or {}))  # CatalogueJob.to_dict's own
    return data.job_id, hashed


@functools.cache
def function_name(func: Callable[..., Any] | str) -> str:
    """The name RQ records for a job's function (``rq.utils.resolve_function_reference``), once per task."""
    return resolve_function_reference(func)[1]


def job(q: Queue, data: EnqueueData, batch_id: str) -> Job:
    """The job RQ's ``Queue.enqueue_many`` makes of ``data`` in group ``batch_id``, as it stands once
    queued (not written): its hash is ``to_dict()``."""
    made = q.create_job(
        data.func, args=data.args, kwargs=data.kwargs, result_ttl=data.result_ttl, ttl=data.ttl,
        failure_ttl=data.failure_ttl, description=data.description, depends_on=data.depends_on, job_id=data.job_id,
        meta=data.meta, status=JobStatus.QUEUED, timeout=data.timeout, retry=data.retry, on_success=data.on_success,
        on_failure=data.on_failure, on_stopped=data.on_stopped, webhooks=data.webhooks, group_id=batch_id,
        repeat=data.repeat,
    )  # fmt: skip
    made.enqueued_at = now()  # as RQ's queue does when it queues a job; origin and status are create_job's
    return made
