"""A job's success as the words of its guarded transaction, written out directly.

``job_steps.finish`` records a success through RQ's own objects: a pipeline, the job's registries
(each built anew on every access), its cleanup, its execution's deletion, then the batch's count,
and turns what they queued into words (``guarded.transaction_words``) for the worker to send. That
took ~75 us of a horse's CPU per job in a drain, a third of all it spent on a no-op job. The common
end (kept for a while, no limit key, no unique key) is written here directly: its dependents read,
then one script (``lua/job_success.lua``) for the dozen writes RQ's objects queue as commands, then
the batch's count. ~40 words instead of ~75: fewer for the horse to hand over and for the worker to
pack, and one script call in Redis instead of a dozen commands run one by one. Any other end still
goes through RQ's objects. ``tests/test_end_words.py`` holds the two leaving Redis alike, key for key,
for the ends this covers, and this one refusing the others.
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
#: The scripts an end's words EVAL, by the SHA1 the guarded transaction knows them by.
_SUCCESS_SHA, _END_SHA = guarded.runnable_sha(jobs.SUCCESS_SCRIPT), guarded.runnable_sha(batches.END_SCRIPT)


Figures = tuple[str, float | None, float | None]


def success(
    worker: Worker, job: Job, execution: Execution, result_ttl: Any, stats: Figures | None
) -> tuple[Guard, list[Any]] | None:
    """The guard and words of ``job``'s success, writing what ``job_steps.finish`` would write through RQ
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
    registries = _registries.get(job.origin)
    if registries is None:
        registries = _registries[job.origin] = (job.started_job_registry.key, job.finished_job_registry.key)
    started_key, finished_key = registries
    job_id, job_key = job.id, job.key
    dependents = Job.dependents_key_for(job_id)
    # RQ writes a job's dependencies set only for a job enqueued with some: for any other, its EXPIRE finds no key.
    dependencies = job.dependencies_key if rq_compat.has_dependencies(job) else ""
    keys = [
        job_key, finished_key, dependents, dependencies, execution.key, started_key,
        ExecutionRegistry.key_template.format(job_id), execution.worker_executions_key,
        backlog.key(job.origin) if stats is not None else "",  # counted in its batch (batches.record_end)
    ]  # fmt: skip
    args = [
        jobs.SERIALIZER.dumps(rq_compat.job_result(job)), utcformat(started_at), utcformat(ended_at),
        current_timestamp() + result_ttl, result_ttl, job_id, execution.id,
    ]  # fmt: skip
    words: list[Any] = [2, "SMEMBERS", dependents]
    words += (len(keys) + len(args) + 3, "EVAL", _SUCCESS_SHA, len(keys), *keys, *args)
    worker.executions.pop(execution.id, None)
    if stats is not None and job.group_id:  # its statistics counted by the caller
        ended = batches.end_args(job.group_id, job_id, "finished", stats[0], rq_compat.job_result(job), stats[1])
        words += (len(ended) + 2, "EVAL", _END_SHA, *ended)
    return Guard("holds", started_key, [execution.composite_key]), words
