"""A job's way through a worker in two Redis round trips, RQ's bookkeeping kept whole.

RQ spends 20 to 25 round trips on each job, most of them single writes: the dequeue and the fetch,
the execution record, the horse's own fetch and preparation, heartbeats, the end callback, a
WATCH on the job's dependents and the transaction that records the end. Here the same keys get
the same values, grouped into one request per step:

1. :func:`claim`: take the first job of the worker's queues and start it: RQ's dequeue, then the
   execution, the started registry, the job's "started" status, in one Lua script sent by the
   worker (an idle worker sends it behind a BLMOVE, as RQ's waits, in the same request: Redis runs
   it as soon as the BLMOVE brings a job);
2. :func:`finish`: the result, the finished registry, the execution's cleanup and the batch's
   count, in one transaction sent by the horse; the worker's counters and the statistics are
   counted in the horse and written about once a second (``tallies.Tally``).

(:func:`start` is the second half of the claim, in Python, for a job the claim leaves unstarted.)
Every step is atomic, and between steps the job is where RQ would have it (the intermediate list,
then the started registry), so the sweep that recovers dead workers' jobs (``recovery``) finds it.
A job with dependents is still handed to RQ after its end; repeats and Retry results take RQ's
own path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import uuid4

import redis
from redis.commands.core import Script
from rq import Queue
from rq.defaults import RQ_KEY_PREFIX
from rq.exceptions import NoSuchJobError
from rq.executions import WORKER_EXECUTIONS_KEY_TEMPLATE, Execution, ExecutionRegistry
from rq.job import Job, JobStatus
from rq.utils import as_text, now, utcformat
from rq.worker import WorkerStatus

from workqueue import batches, dependencies, guarded, jobs, lua, rq_compat, tallies
from workqueue.guarded import SUPERSEDED, Guard, direct_client, note_superseded, run_guarded
from workqueue.settings import LATE_CLAIM
from workqueue.worker import claim_request, end_words

if TYPE_CHECKING:
    from rq.worker import Worker

    from workqueue.worker.idle_bell import IdleBell

log = logging.getLogger(__name__)

# Takes the first job of the worker's queues and starts it: RQ's dequeue (an LMOVE into the
# queue's intermediate list) and what RQ's ``prepare_execution`` and ``prepare_job_execution`` then
# write, in one atomic step, so the job goes from its queue to the started registry at once.
# ``test_job_steps`` holds these writes to RQ's own, key for key and field for field.
#
# KEYS: the worker's hash, the worker's execution index, then for each queue in the worker's
# order its list, its intermediate list and its started registry.
# ARGV: the job, execution and execution-registry key prefixes; the new execution's id; the
# worker's name; now (epoch seconds as a float, as an int, and as RQ's UTC text; three '': Redis's
# clock, for a claim sent behind a BLMOVE that waits); the job monitoring interval; whether to set
# the worker "busy"; the most dangling ids to drop; the id of a job already moved into the first
# queue's intermediate list, '*' for the one the BLMOVE sent just before the claim moved there ('+': the
# same, and with none moved, no look at the queues: false at once), or ''
# (ignored if it is no longer there: a sweep put it back while the BLMOVE's answer was on its way).
# Answers false (every queue empty), {0} (dropped ids of jobs whose hash had gone: ask again), or
# {queue number, job id, the job's hash as read before starting it, the execution's TTL}, and as
# many more such fours as further jobs were started: ARGV[16..] (optional) are one more execution
# id per further job to start at once (``claim_many``), ARGV[13] the depth a quiet queue must have
# for a further job to be taken from it (0: any, a worker filling its free slots); ARGV[14] and [15]
# the idle bells' (``workqueue.bells``): found fewer jobs than ARGV[14], the worker is noted idle;
# found as many, it is taken out of the idle sets if ARGV[15] is 1 (it was noted);
# a job whose timeout is not a plain number is answered with a TTL of -1, left unstarted in the
# intermediate list, for RQ's own code to start.
# A paused queue (``pausing``) gives no job, and each queue's jobs are taken from its priority
# levels' lists, highest first (``priorities``; RQ's own list is level 5): the script names those
# keys itself, from the queue's key; a BLMOVE'd job goes back to the front of its list if its queue
# is paused or holds a job of a higher level.
_CLAIM = lua.script("claim")

#: Jobs whose hash has gone (deleted while queued) one claim drops before it answers "try again".
_MAX_DROPPED = 100

_claim_script: Script | None = None
#: Each queue's keys as the claim needs them (building a registry to learn its key is not free).
_queue_keys: dict[str, list[str]] = {}


def prepare(connection: redis.Redis, groups: bool = False) -> None:
    """Open this process's connection for a job's requests and load their scripts, so that its
    first job waits for neither (a worker calls it as it starts, a horse as it starts; ``groups``:
    ends written in groups too, ``guarded.prepare``)."""
    global _claim_script
    try:
        client = direct_client(connection)
        _claim_script = _claim_script or client.register_script(_CLAIM)
        client.script_load(_claim_script.script)
        guarded.prepare(client, groups)
    except redis.RedisError:  # Redis is away: the first job loads them itself
        log.debug("could not load the job scripts", exc_info=True)


class _Claimed:
    """What :func:`claim` found: nothing yet (``retry``), or a job and its queue, and the job's
    execution if the claim started it."""

    __slots__ = ("execution", "job", "queue", "retry")

    def __init__(
        self,
        job: Job | None = None,
        queue: Queue | None = None,
        retry: bool = False,
        execution: Execution | None = None,
    ) -> None:
        self.job, self.queue, self.retry, self.execution = job, queue, retry, execution


def claim(worker: Worker, queues: Sequence[Queue], moved: bytes | None = None) -> _Claimed:
    """Take the first job of ``queues`` (in order) without blocking, and start it, in one round trip;
    ``moved``: the id of a job the worker already moved into the first queue's intermediate list."""
    claimed = claim_many(worker, queues, 1, moved)
    return claimed[0] if claimed else _Claimed()


def claim_many(
    worker: Worker,
    queues: Sequence[Queue],
    count: int,
    moved: bytes | None = None,
    *,
    ahead_depth: int = 0,
    before: tuple[list[Any], Callable[[Any], None]] | None = None,
    wait: float | None = None,
    moved_only: bool = False,
) -> list[_Claimed]:
    """:func:`claim`, taking up to ``count`` jobs in the same round trip (a worker running several
    jobs at once fills its free slots), each started with an execution of its own. Answers the jobs
    found, in order (none: every queue empty), or ``[_Claimed(retry=True)]`` (ask again).
    ``ahead_depth`` above 0: a job beyond the first only comes from a queue using no pause, limit
    or level that still holds more than that many jobs (a worker claiming ahead, ``claiming``).
    ``before``: a command sent first in the same request (the ends a worker holds, ``held_ends``) and
    the function handed its reply (an error reply, or what cut the request, as the exception).

    ``wait`` (seconds): an idle worker's wait for a job, in the same request. A BLMOVE on the first
    queue goes first, and Redis runs the claim as soon as the BLMOVE returns, so a job that arrives
    starts without a second round trip. Meanwhile the worker stays idle, so a stop signal still
    stops it at once. A stop that cuts the wait (``claim_request.ClaimCut``) ends the request
    (``CLIENT KILL``) and finds the jobs its claim started, if it ran, for them to be given back.

    ``moved_only`` (with ``wait``): the claim takes the job the BLMOVE moved, if any, and looks at no
    other queue or level (an idle worker between two looks).

    A reply that comes more than LATE_CLAIM seconds late (beyond ``wait``) raises :class:`LateClaim`
    with the jobs it started: not to be run, but given back."""
    connection = worker.connection
    keys: list[str] = [worker.key, WORKER_EXECUTIONS_KEY_TEMPLATE.format(worker.name)]
    for queue in queues:
        if queue.name not in _queue_keys:
            _queue_keys[queue.name] = [queue.key, queue.intermediate_queue_key, queue.started_job_registry.key]
        keys += _queue_keys[queue.name]
    global _claim_script
    if _claim_script is None:
        _claim_script = connection.register_script(_CLAIM)
    execution_ids, started = [uuid4().hex for _ in range(max(1, count))], now()
    # Idle bells (``workqueue.bells``): found fewer than this, the worker waits next, and is noted idle.
    bell: IdleBell = worker.idle_bell  # type: ignore[attr-defined]
    idle_below = 1 if ahead_depth else count
    state = worker.get_state()
    args = [
        Job.redis_job_namespace_prefix,
        f"{RQ_KEY_PREFIX}:execution:",
        ExecutionRegistry.key_template.format(""),
        execution_ids[0],
        worker.name,
        *(("", "", "") if wait is not None else (started.timestamp(), int(started.timestamp()), utcformat(started))),
        worker.job_monitoring_interval,
        int(state != WorkerStatus.BUSY),
        _MAX_DROPPED,
        ("+" if moved_only else "*") if wait is not None else moved or "",
        ahead_depth,
        idle_below,
        int(bell.noted),
        *execution_ids[1:],  # one more id per further job to start
    ]
    # Busy in memory before the job can be started in Redis: a stop signal arriving meanwhile then
    # lets the job run to its end (RQ's warm shutdown) instead of leaving it started and unrun.
    # Not while it waits for a job (``wait``): a stop then cuts the wait (ClaimCut).
    if wait is None:
        rq_compat.set_worker_state(worker, WorkerStatus.BUSY)
    reply = None
    client = direct_client(connection)
    sent = time.monotonic()
    try:
        if before is None and wait is None:
            reply = _claim_script(keys=keys, args=args, client=client)
        else:
            claim = ["EVALSHA", _claim_script.sha, len(keys), *keys, *args]
            if wait is None:
                assert before is not None
                got = claim_request.send_after(client, before, claim)
            else:
                got = claim_request.send_waiting(worker, client, queues[0], wait, before, claim)
                if isinstance(got, claim_request.ClaimCut):  # a stop cut the wait: the jobs it started go back
                    got.found = _started_by(worker, queues, execution_ids)
                    raise got
                started = now()  # when the BLMOVE brought the job (the claim wrote Redis's own clock)
            if isinstance(got, redis.exceptions.NoScriptError):  # a Redis that lost its scripts: loaded again
                got = _claim_script(keys=keys, args=args, client=client)
            elif isinstance(got, Exception):
                raise got
            reply = got
    finally:
        if not reply or reply[0] == 0 or (len(reply) == 4 and reply[3] < 0):  # nothing started
            rq_compat.set_worker_state(worker, state)
        else:
            rq_compat.set_worker_state(worker, WorkerStatus.BUSY)
    found = _found(worker, queues, execution_ids, reply, started)
    if not found or not found[0].retry:
        bell.noted = len(found) < idle_below
    late = time.monotonic() - sent - (wait or 0.0)
    if late > LATE_CLAIM and found and not found[0].retry:
        if state != WorkerStatus.BUSY:
            worker.set_state(state)  # as it was: what it claimed is given back unrun
        raise LateClaim(found, late)
    return found


def _started_by(worker: Worker, queues: Sequence[Queue], execution_ids: list[str]) -> list[_Claimed]:
    """The jobs a claim whose request a stop cut started all the same (``claim_request.ClaimCut``),
    found by their execution ids in the worker's index of executions, as the claim would have
    answered them; none if Redis cannot say (they are left to the sweep)."""
    connection, ours = worker.connection, set(execution_ids)
    found: list[_Claimed] = []
    try:
        for member in connection.smembers(WORKER_EXECUTIONS_KEY_TEMPLATE.format(worker.name)):
            job_id, _, execution_id = as_text(member).rpartition(":")
            if execution_id not in ours:
                continue
            composite = f"{job_id}:{execution_id}"
            queue = next(
                (q for q in queues if connection.zscore(q.started_job_registry.key, composite) is not None), None
            )
            if queue is None:
                continue
            job = worker.job_class.fetch(job_id, connection=connection, serializer=worker.serializer)
            execution = Execution(execution_id, job_id, connection, worker_name=worker.name)
            worker.executions[execution_id] = execution
            found.append(_Claimed(job, queue, execution=execution))
    except (redis.RedisError, NoSuchJobError) as exc:
        log.warning("could not look for the job a cut claim started (%s); the sweep hands it back", exc)
    return found


def _found(
    worker: Worker, queues: Sequence[Queue], execution_ids: list[str], reply: Any, started: datetime
) -> list[_Claimed]:
    """The jobs a claim's ``reply`` names, as :func:`claim_many` answers them (each started one with
    its execution, in the worker's memory as RQ's would be)."""
    connection = worker.connection
    if not reply:
        return []
    if reply[0] == 0:
        return [_Claimed(retry=True)]
    found = []
    for at in range(0, len(reply), 4):
        number, job_id, fields, ttl = reply[at : at + 4]
        execution_id = execution_ids[at // 4]
        queue, job_id = queues[number - 1], job_id.decode()
        job = restore(
            worker.job_class, job_id, dict(zip(fields[::2], fields[1::2], strict=True)), connection, worker.serializer
        )
        if ttl < 0:
            found.append(_Claimed(job, queue))
            continue
        # What RQ's prepare_execution and prepare_job_execution leave in memory.
        job.worker_name = worker.name
        job.started_at = job.last_heartbeat = started
        rq_compat.set_job_status(job, JobStatus.STARTED)
        execution = Execution(execution_id, job_id, connection, worker_name=worker.name)
        execution.created_at = execution.last_heartbeat = started
        rq_compat.set_execution_job(execution, job)
        worker.executions[execution_id] = execution
        found.append(_Claimed(job, queue, execution=execution))
    return found


class LateClaim(Exception):
    """A claim answered too late to run what it started (``claim_many``): ``found``, to be given back."""

    def __init__(self, found: list[_Claimed], late: float) -> None:
        super().__init__(f"a claim was answered {late:.1f} s late")
        self.found = found


def restore(
    job_class: type[Job], job_id: str, raw: dict[bytes, bytes], connection: redis.Redis, serializer: Any
) -> Job:
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
    rq_compat.set_execution_job(execution, job)
    worker.executions[execution.id] = execution
    return execution


def finish(
    worker: Worker,
    job: Job,
    queue: Queue,
    execution: Execution,
    *,
    count_in_batch: bool,
    also: Callable[[redis.client.Pipeline], Callable[[Any], None]] | None = None,
) -> bool:
    """Record the success of ``job`` in one transaction: what RQ's ``handle_job_success`` writes
    and the batch's count (``count_in_batch``: what the job's success callback,
    ``batches.task_finished``, would have sent in a request of its own). The worker's counters and
    (with ``count_in_batch``) the statistics go to this process's ``tallies.Tally``, written
    about once a second.

    Only while this run still holds the job (its execution is in the started registry): a run
    whose job was handed back meanwhile (its worker frozen, then taken for dead) writes nothing
    but a note (``meta["superseded"]``), and False is returned. While Redis refuses writes (out of
    memory, a failed save) the end waits and is tried again, whole: it is never half written.

    RQ WATCHes the job's dependents first; here they are read inside the transaction instead, which
    is as safe: a dependent added before it is seen, and one added after finds the job finished
    and is enqueued by whoever adds it. The rare job that has some has them settled after its end
    (``dependencies.settle``: released exactly once, whichever dependency ends last, on whatever worker).

    ``also(pipe)``, if given, queues more commands last in the same transaction (the job's last
    progress report, ``progress.ProgressStore.with_end``) and answers a function given their last reply.
    """
    result_ttl = job.get_result_ttl(worker.default_result_ttl)
    figures = batches.figures(job) if count_in_batch else None
    started_at, ended_at = job.started_at, job.ended_at
    assert started_at is not None and ended_at is not None  # set when the job started and ended

    def build(pipe: redis.client.Pipeline) -> None:
        pipe.smembers(job.dependents_key)
        if result_ttl != 0:  # RQ's Job success handling, writing the fields that changed, not the whole job
            changed = {"status": JobStatus.FINISHED, "started_at": utcformat(started_at)}
            changed["ended_at"] = utcformat(ended_at)
            jobs.keep_result(pipe, job, rq_compat.job_result(job), changed)  # not RQ's 4 KB result stream
            job.finished_job_registry.add(job, result_ttl, pipe)
        job.cleanup(result_ttl, pipeline=pipe, remove_from_queue=False)
        worker.cleanup_execution(job, pipeline=pipe, execution=execution)
        if count_in_batch:
            batches.record_end(pipe, job, "finished", detail=rq_compat.job_result(job), stats=figures)
        if also is not None:
            answered[:] = [also(pipe)]

    answered: list[Callable[[Any], None]] = []
    if _handed is not None and also is None and not job.webhooks and not job.has_rate_limit:
        direct = end_words.success(worker, job, execution, result_ttl, figures if count_in_batch else None)
        handed: dict[str, Any] | None
        if direct is not None:
            handed = {"job": job.id, "execution": execution.id, "guard": direct[0].words(), "words": direct[1]}
        else:
            handed = _hand_over(worker.connection, build, job.id, execution.id, Guard.holds(job, execution.id))
        if handed is not None:  # the worker writes it (``held_ends``): nothing after the end is left to do here
            # counted by the worker once written: a run found superseded then is not counted
            handed["count"] = [worker.key, (ended_at - started_at).total_seconds(), job.origin, figures]
            _handed.append(handed)
            rq_compat.set_job_status(job, JobStatus.FINISHED)
            return True
    replies = run_guarded(worker.connection, build, Guard.holds(job, execution.id), what=f"the end of job {job.id}")
    if replies is SUPERSEDED:
        note_superseded(worker.connection, job.id, execution.id, worker.name, "finished")
        return False
    rq_compat.set_job_status(job, JobStatus.FINISHED)
    if answered:
        answered[0](replies[-1])
    count_end(worker.connection, [worker.key, (ended_at - started_at).total_seconds(), job.origin, figures])
    settle_end(worker.connection, job.id, replies)
    rq_compat.release_slot_safely(worker, job)
    return True


def count_end(connection: redis.Redis, count: list[Any]) -> None:
    """Count a job's end, once written, in this process's tally (``tallies.Tally``, written about
    once a second): RQ's worker counters and, for a job of a batch, the statistics. ``count``: the
    worker's key, the seconds the job ran, its queue, and its ``batches.figures`` (or None)."""
    worker_key, seconds, queue, figures = count
    tally = tallies.tally(connection)
    tally.add_worker(worker_key, 1, seconds)
    if figures is not None:
        task, run, wait = figures
        tally.add_end(queue, task, "finished", run, wait)


def settle_end(connection: redis.Redis, job_id: str, replies: list[Any]) -> None:
    """What follows a job's end once written (``replies``: its transaction's, the dependents first):
    a warning if Redis refused part of it, and its dependents settled."""
    failed = [reply for reply in replies if isinstance(reply, Exception)]
    if failed:  # the transaction was applied; a command in it was refused (e.g. a key of the wrong type)
        log.warning("job %s finished, but Redis refused part of its record: %s", job_id, failed[0])
    if replies and replies[0] and not isinstance(replies[0], Exception):
        dependencies.settle_safely(connection, job_id)  # not RQ's enqueue_dependents: see dependencies


#: In a one-job horse whose worker writes its ends (:func:`hand_ends_to_worker`): the ends handed
#: over since the horse last answered, None otherwise.
_handed: list[dict[str, Any]] | None = None


def hand_ends_to_worker() -> None:
    """From now on, in this horse, :func:`finish` hands a job's end over (:func:`handed_ends`)
    instead of writing it, when nothing after the end needs its reply in the horse: no progress
    report held, no webhook, no RQ rate limit. The worker writes them (``worker.held_ends``)."""
    global _handed
    _handed = []


def handed_ends() -> list[dict[str, Any]]:
    """The ends handed over since the last call (for the horse's answer), each
    ``{"job", "execution", "guard", "words", "count"}`` in plain data (``count``: see :func:`count_end`)."""
    if not _handed:
        return []
    ends = _handed[:]
    _handed.clear()
    return ends


def _hand_over(
    connection: redis.Redis, build: Callable[[Any], None], job_id: str, execution_id: str, guard: Guard
) -> dict[str, Any] | None:
    """The end ``build`` queues, as plain data the worker can write (``guarded.run_group``); None
    if it cannot be (a script the guarded run does not know, or a word Redis would not take)."""
    with connection.pipeline() as pipe:
        build(pipe)
        words = guarded.transaction_words(pipe)
    if words is None:
        return None
    encode = connection.get_encoder().encode
    try:  # as redis-py would send them (a str enum, say, as its text): plain data ``marshal`` carries
        words = [word if type(word) in _PLAIN else encode(word) for word in words]
    except (redis.DataError, TypeError):
        return None
    return {"job": job_id, "execution": execution_id, "guard": guard.words(), "words": words}


_PLAIN = (str, bytes, int, float)
