"""A job's success as the words of its guarded transaction, written out directly.

``job_steps.finish`` records a success through RQ's own objects: a pipeline, the job's registries
(each built anew on every access), its cleanup, its execution's deletion, then the batch's count,
and turns what they queued into words (``guarded.transaction_words``) for the worker to send. That
took ~75 us of a horse's CPU per job in a drain, a third of all it spent on a no-op job. The common
end (kept for a while, no limit key, no unique key) is written here as the same words, in the same
order, in ~40 us (~19 warm); any other end still goes through RQ's objects. ``tests/test_end_words.py``
holds the two equal, word for word, for the ends this covers, and this one refusing the others.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from rq.executions import ExecutionRegistry
from rq.job import Job
from rq.utils import current_timestamp, utcformat

from workqueue import backlog, batches, guarded, jobs, limits, rq_compat, unique
from workqueue.guarded import Guard

if TYPE_CHECKING:
    from rq.executions import Execution
    from rq.worker import Worker

#: Each queue's started and finished registry keys (building a registry to learn its key is not free).
_registries: dict[str, tuple[str, str]] = {}
#: What an end's job status becomes, as redis-py encodes RQ's ``JobStatus.FINISHED``.
_FINISHED = b"finished"


Figures = tuple[str, float | None, float | None]


def success(
    worker: Worker, job: Job, execution: Execution, result_ttl: Any, stats: Figures | None
) -> tuple[Guard, list[Any]] | None:
    """The guard and words of ``job``'s success, as ``job_steps.finish`` would build them through RQ
    (``stats``: the job's ``batches.figures`` when it is counted in its batch, else None); None if this
    end is not one written here (kept forever or not at all, a limit key, a unique key, no worker
    name, no queue). Like RQ's cleanup, it forgets the execution in the worker's memory."""
    if (
        type(result_ttl) is not int or result_ttl <= 0 or not job.origin or not execution.worker_name
        or limits.job_key(job) or unique.META in (job.meta or {})
    ):  # fmt: skip
        return None
    started_at, ended_at = job.started_at, job.ended_at
    assert isinstance(started_at, datetime) and isinstance(ended_at, datetime)  # set as it started and ended
    keys = _registries.get(job.origin)
    if keys is None:
        keys = _registries[job.origin] = (job.started_job_registry.key, job.finished_job_registry.key)
    started_key, finished_key = keys
    job_id, job_key, composite = job.id, job.key, execution.composite_key
    changed = {"status": _FINISHED, "started_at": utcformat(started_at), "ended_at": utcformat(ended_at)}
    kept = jobs.result_args(job_key, rq_compat.job_result(job), changed)
    words: list[Any] = [2, "SMEMBERS", Job.dependents_key_for(job_id)]
    words += (len(kept) + 2, "EVAL", guarded.runnable_sha(jobs.COMPACT_SCRIPT), *kept)
    # RQ's FinishedJobRegistry.add, Job.cleanup, then its cleanup_execution (Execution.delete)
    words += (4, "ZADD", finished_key, current_timestamp() + result_ttl, job_id)
    words += (3, "EXPIRE", job_key, result_ttl, 3, "EXPIRE", Job.dependents_key_for(job_id), result_ttl)
    words += (3, "EXPIRE", job.dependencies_key, result_ttl, 2, "DEL", execution.key)
    words += (3, "ZREM", started_key, composite, 3, "ZREM", ExecutionRegistry.key_template.format(job_id))
    words += (execution.id, 3, "SREM", execution.worker_executions_key, composite)
    worker.executions.pop(execution.id, None)
    if stats is not None:  # batches.record_end, its statistics counted by the caller
        if job.group_id:
            ended = batches.end_args(job.group_id, job_id, "finished", stats[0], rq_compat.job_result(job), stats[1])
            words += (len(ended) + 2, "EVAL", guarded.runnable_sha(batches.END_SCRIPT), *ended)
        words += (3, "ZREM", backlog.key(job.origin), job_id)
    return Guard("holds", started_key, [composite]), words
