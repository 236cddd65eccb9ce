"""A job's way through a worker in three Redis round trips, RQ's bookkeeping kept whole.

RQ spends 20 to 25 round trips on each job, most of them single writes: the dequeue and the fetch,
the execution record, the horse's own fetch and preparation, heartbeats, the end callback, a
WATCH on the job's dependents and the transaction that records the end. Here the same keys get
the same values, grouped into one request per step:

1. :func:`claim`: move the first job of the worker's queues into its intermediate list and read
   its hash (one Lua script; the blocking wait of an idle worker stays RQ's BLMOVE);
2. :func:`start`: the execution, the started registry, the job's "started" status and its
   removal from the intermediate list, in one transaction sent by the worker;
3. :func:`finish`: the result, the finished registry, the worker's counters, the execution's
   cleanup, the batch's count and the statistics, in one transaction sent by the horse.

Every step is atomic, and between steps the job is where RQ would have it (the intermediate
list, then the started registry), so the sweep that recovers dead workers' jobs (``recovery``)
finds it. A job with dependents is still handed to RQ after its end; repeats and Retry results
take RQ's own path.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional

import redis
from redis.commands.core import Script
from rq import Queue
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.results import Result
from rq.utils import utcformat
from rq.worker import WorkerStatus

from workqueue import batches

if TYPE_CHECKING:
    from rq.worker import Worker

log = logging.getLogger(__name__)

# KEYS: each queue's key then its intermediate list's, in the worker's order. ARGV[1]: the job key
# prefix; ARGV[2]: the most dangling ids (jobs whose hash is gone) to drop in one call.
_CLAIM = """
local dropped = 0
for i = 1, #KEYS, 2 do
  while true do
    local id = redis.call('LMOVE', KEYS[i], KEYS[i + 1], 'LEFT', 'RIGHT')
    if not id then break end
    local job = redis.call('HGETALL', ARGV[1] .. id)
    if #job > 0 then return {(i + 1) / 2, id, job} end
    redis.call('LREM', KEYS[i + 1], 1, id)
    dropped = dropped + 1
    if dropped >= tonumber(ARGV[2]) then return {0} end
  end
end
return false
"""

#: Jobs whose hash has gone (deleted while queued) one claim drops before it answers "try again".
_MAX_DROPPED = 100

_claim_script: Optional[Script] = None


class _Claimed:
    """What :func:`claim` found: nothing yet (``retry``), or a job and its queue."""

    __slots__ = ("job", "queue", "retry")

    def __init__(self, job: Optional[Job] = None, queue: Optional[Queue] = None, retry: bool = False) -> None:
        self.job, self.queue, self.retry = job, queue, retry


def claim(connection: redis.Redis, queues: Sequence[Queue], job_class: type[Job], serializer: Any) -> _Claimed:
    """Take the first job of ``queues`` (in order) without blocking, in one round trip."""
    keys: list[str] = []
    for queue in queues:
        keys += [queue.key, queue.intermediate_queue_key]
    global _claim_script
    if _claim_script is None:
        _claim_script = connection.register_script(_CLAIM)
    reply = _claim_script(keys=keys, args=[Job.redis_job_namespace_prefix, _MAX_DROPPED], client=connection)
    if not reply:
        return _Claimed()
    if reply[0] == 0:
        return _Claimed(retry=True)
    queue = queues[reply[0] - 1]
    fields = reply[2]
    raw = dict(zip(fields[::2], fields[1::2]))
    return _Claimed(restore(job_class, reply[1].decode(), raw, connection, serializer), queue)


def restore(job_class: type[Job], job_id: str, raw: dict[bytes, bytes], connection: redis.Redis,
            serializer: Any) -> Job:
    """A job built from its hash as read from Redis, which it keeps (``claimed_hash``) so the horse
    can build it again without reading it a second time."""
    job = job_class(job_id, connection=connection, serializer=serializer)
    job.restore(raw)
    job.claimed_hash = raw  # type: ignore[attr-defined]
    return job


def start(worker: Worker, job: Job, queue: Queue, heartbeat: bool) -> Execution:
    """Record that ``worker`` starts ``job``, in one transaction: RQ's ``prepare_execution`` (the
    execution, the started registry, the busy state) and the horse's ``prepare_job_execution``
    (the job's status and worker, its removal from the intermediate list), plus the worker's
    heartbeat when one is due."""
    ttl = worker.get_heartbeat_ttl(job)
    with worker.connection.pipeline() as pipe:
        execution = Execution.create(job, ttl, pipeline=pipe, worker_name=worker.name)
        if worker.get_state() != WorkerStatus.BUSY:
            worker.set_state(WorkerStatus.BUSY, pipeline=pipe)
        if heartbeat:
            worker.heartbeat(ttl, pipeline=pipe)
        job.prepare_for_execution(worker.name, pipeline=pipe)
        pipe.persist(job.key)
        pipe.lrem(queue.intermediate_queue_key, 1, job.id)
        pipe.execute()
    execution._job = job
    worker.executions[execution.id] = execution
    return execution


def finish(worker: Worker, job: Job, queue: Queue, execution: Execution, *, count_in_batch: bool) -> None:
    """Record the success of ``job`` in one transaction: what RQ's ``handle_job_success`` writes,
    the batch's count and the statistics (``count_in_batch``: what the job's success callback,
    ``batches.task_finished``, would have sent in a request of its own).

    RQ WATCHes the job's dependents first; here they are read inside the transaction instead, which
    is as safe: a dependent added before it is seen, and one added after finds the job finished
    and is enqueued by whoever adds it. The rare job that has some is handed to RQ to enqueue them.
    """
    result_ttl = job.get_result_ttl(worker.default_result_ttl)
    with worker.connection.pipeline() as pipe:
        pipe.smembers(job.dependents_key)
        worker.increment_successful_job_count(pipeline=pipe)
        worker.increment_total_working_time(job.ended_at - job.started_at, pipe)  # type: ignore[operator]
        if result_ttl != 0:  # RQ's Job._handle_success, writing the fields that changed, not the whole job
            pipe.hset(job.key, mapping={"status": JobStatus.FINISHED, "started_at": utcformat(job.started_at),
                                        "ended_at": utcformat(job.ended_at)})
            Result.create(job, Result.Type.SUCCESSFUL, result_ttl, return_value=job._result, worker_name=worker.name,
                          pipeline=pipe, execution_id=execution.id, execution_started_at=execution.created_at,
                          execution_ended_at=job.ended_at)
            job.finished_job_registry.add(job, result_ttl, pipe)
        job.cleanup(result_ttl, pipeline=pipe, remove_from_queue=False)
        job._status = JobStatus.FINISHED
        worker.cleanup_execution(job, pipeline=pipe, execution=execution)
        if count_in_batch:
            batches.record_end(pipe, job, "finished", detail=job._result)
        replies = pipe.execute(raise_on_error=False)
    failed = [reply for reply in replies if isinstance(reply, Exception)]
    if failed:  # the transaction was applied; a command in it was refused (e.g. a key of the wrong type)
        log.warning("job %s finished, but Redis refused part of its record: %s", job.id, failed[0])
    if replies[0] and not isinstance(replies[0], Exception):
        worker._enqueue_dependents_safely(queue, job)
    worker._release_slot_safely(job)
