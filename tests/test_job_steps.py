"""A job's start and end in one round trip each (``workqueue.worker.job_steps``) write what RQ's own
code writes: the same keys, fields, values and lifetimes, so RQ's registries, rq-dashboard, the
kill scripts and the recovery sweep see a job exactly as RQ would leave it."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
import redis
from rq import Queue, Worker
from rq.executions import prepare_execution
from rq.utils import now

from workqueue import jobstats, producer, tallies
from workqueue.worker import job_steps
from workqueue.worker.catalogue_worker import CatalogueWorker

QUEUE = "fidelity"
_TIME = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z|\b1[6-9]\d{8}(\.\d+)?\b")
_DURATION = re.compile(rb"\d+\.\d+")
#: A statistics histogram's bucket: which one a job's run falls in depends on the machine's load.
_BUCKET = re.compile(rb"le:(\d+(\.\d+)?|\+Inf)")
_CLIENT_PORT = re.compile(rb"(?<=127\.0\.0\.1:)\d+")  # a worker's ip_address: which pooled connection asked
#: A statistics minute's hash (``jobstats.bucket_key``): a job enqueued in one minute and ended in the next
#: counts in two of them, where a run a moment apart counts in one (1 in 25 runs of two compared snapshots).
_MINUTE = re.compile(r"(workqueue:stats:[^:]+):\d+")


class _About(float):
    """Seconds that equal any within 2 s: a TTL or score read a moment later (rounding them to a
    grid would not do: two readings astride one of its lines differ by a whole step)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, (int, float)) and abs(self - other) <= 2

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = float.__hash__


def new_worker(conn: redis.Redis) -> CatalogueWorker:
    worker = CatalogueWorker([QUEUE], connection=conn, name="fidelity-worker")
    worker.register_birth()
    worker.set_state("idle")
    return worker


def snapshot(conn: redis.Redis, ids: dict[str, str]) -> dict[str, Any]:
    """Every key, ids replaced by names, times by T, durations by D, histogram buckets by B and the
    statistics' minutes by one (their counts summed): its type, TTL and contents (sorted-set scores
    and TTLs as seconds from now, equal within 2 s so that two runs a moment apart compare equal; a
    stream's entries without their ids)."""

    def norm(value: Any) -> Any:
        if isinstance(value, (bytes, str)):
            value = value.encode() if isinstance(value, str) else value
            for real, name in ids.items():
                value = value.replace(real.encode(), name.encode())
            value = _CLIENT_PORT.sub(b"P", _TIME.sub(b"T", value))
            if _BUCKET.fullmatch(value):
                return b"le:B"
            return b"D" if _DURATION.fullmatch(value) else value
        return value

    clock = time.time()
    found: dict[str, Any] = {}
    for key in conn.keys("*"):
        kind, ttl = conn.type(key).decode(), conn.ttl(key)
        if kind == "hash":
            content: Any = sorted((norm(k), norm(v)) for k, v in conn.hgetall(key).items())
        elif kind == "zset":
            content = sorted((norm(m), _About(s - clock)) for m, s in conn.zrange(key, 0, -1, withscores=True))
        elif kind == "set":
            content = sorted(norm(m) for m in conn.smembers(key))
        elif kind == "list":
            content = [norm(m) for m in conn.lrange(key, 0, -1)]
        elif kind == "stream":
            content = [sorted((norm(k), norm(v)) for k, v in fields.items()) for _, fields in conn.xrange(key)]
        else:
            content = kind
        name = norm(key).decode()
        minute = _MINUTE.fullmatch(name)
        if minute and kind == "hash":  # the minutes' counts, summed: which minute each fell in is left out
            name = f"{minute[1]}:MINUTE"
            counts = dict(found[name][2]) if name in found else {}
            for field_name, value in content:
                counts[field_name] = str(int(counts.get(field_name, 0)) + int(value)).encode()
            content = sorted(counts.items())
        found[name] = (kind, ttl if ttl < 0 else _About(ttl), content)
    return found


def enqueued(conn: redis.Redis) -> tuple[str, str]:
    """A fresh database holding one queued job: the job's and its batch's ids."""
    conn.flushdb()
    result = producer.enqueue(conn, [producer.TaskCall.build("primes", {"n": 0}, retries=0)], QUEUE)
    return result.jobs[0].id, result.batch_id


def test_the_claim_starts_a_job_as_rq_prepare_execution_and_prepare_job_execution_do(conn) -> None:
    # RQ's way: dequeue, then the worker's prepare_execution and the horse's prepare_job_execution.
    job_id, batch_id = enqueued(conn)
    worker = new_worker(conn)
    job, queue = Queue.dequeue_any(
        worker.queues, None, connection=conn, job_class=worker.job_class, serializer=worker.serializer
    )
    rq_execution = prepare_execution(worker, job)
    Worker.prepare_job_execution(worker, job, remove_from_intermediate_queue=True)
    by_rq = snapshot(conn, {job_id: "JOB", batch_id: "BATCH", rq_execution.id: "EXECUTION"})

    # Ours: one script, then the worker's heartbeat, as execute_job sends it.
    job_id, batch_id = enqueued(conn)
    worker = new_worker(conn)
    claimed = job_steps.claim(worker, worker.queues)
    worker.heartbeat()
    assert claimed.job.id == job_id and claimed.execution is not None
    ours = snapshot(conn, {job_id: "JOB", batch_id: "BATCH", claimed.execution.id: "EXECUTION"})

    assert ours == by_rq
    # And in memory, what the worker goes on with.
    assert claimed.job.get_status(refresh=False) == "started" and claimed.job.worker_name == worker.name
    assert worker.executions == {claimed.execution.id: claimed.execution} and worker.get_state() == "busy"


def test_the_end_is_recorded_as_rq_handle_job_success_and_the_batch_callback_do(conn) -> None:
    def run(record) -> dict[str, Any]:
        job_id, batch_id = enqueued(conn)
        worker = new_worker(conn)
        claimed = job_steps.claim(worker, worker.queues)
        job = claimed.job
        job.ended_at = now()
        job._result = {"n": 0, "primes": 0}
        record(worker, job, claimed.queue, claimed.execution)
        return snapshot(conn, {job_id: "JOB", batch_id: "BATCH", claimed.execution.id: "EXECUTION"})

    def rqs(worker: CatalogueWorker, job, queue, started) -> None:
        job.success_callback(job, conn, job._result)  # batches.task_finished, as RQ calls it
        Worker.handle_job_success(worker, job, queue, queue.started_job_registry, started)

    def ours(worker: CatalogueWorker, job, queue, started) -> None:
        job_steps.finish(worker, job, queue, started, count_in_batch=True)
        tallies.tally(conn).flush()  # the worker's counters and the statistics: written once a second

    by_rq, by_us = run(rqs), run(ours)
    # RQ rewrites the whole job hash at its end; we write the fields that changed. Same result.
    assert by_us == by_rq


def test_a_job_whose_hash_is_gone_is_dropped_and_the_next_one_claimed(conn) -> None:
    gone, _ = enqueued(conn)
    conn.delete(f"rq:job:{gone}")
    kept = producer.enqueue(conn, [producer.TaskCall.build("primes", {"n": 0}, retries=0)], QUEUE).jobs[0].id
    worker = new_worker(conn)
    claimed = job_steps.claim(worker, worker.queues)
    assert claimed.job.id == kept
    assert conn.lrange(f"rq:queue:{QUEUE}:intermediate", 0, -1) == []
    assert job_steps.claim(worker, worker.queues).job is None  # and then the queue is empty


def test_the_end_leaves_the_workers_counters_and_the_statistics_to_the_tally_written_once_a_second(conn) -> None:
    job_id, _ = enqueued(conn)
    worker = new_worker(conn)
    claimed = job_steps.claim(worker, worker.queues)
    claimed.job.ended_at = now()
    assert job_steps.finish(worker, claimed.job, claimed.queue, claimed.execution, count_in_batch=True)
    assert conn.hget(f"rq:job:{job_id}", "status") == b"finished"  # the job's own end: at once
    assert not conn.exists(jobstats.totals_key(QUEUE)) and not conn.hexists(worker.key, "successful_job_count")
    tallies.tally(conn).flush()
    assert conn.hget(jobstats.totals_key(QUEUE), "primes:finished") == b"1"
    assert conn.hget(worker.key, "successful_job_count") == b"1"


def commands_sent(conn: redis.Redis, step: Any) -> dict[str, int]:
    """The Redis commands ``step()`` makes run, by name (those inside scripts counted), from INFO commandstats."""

    def calls() -> dict[str, int]:
        return {k.removeprefix("cmdstat_"): v["calls"] for k, v in conn.info("commandstats").items()}

    before = calls()
    step()
    return {name: n - before.get(name, 0) for name, n in calls().items() if n != before.get(name, 0)}


def test_a_claim_where_no_queue_is_paused_and_no_priority_level_or_held_job_exists_looks_once(conn) -> None:
    enqueued(conn)
    worker = new_worker(conn)
    sent = commands_sent(conn, lambda: job_steps.claim(worker, worker.queues).job or pytest.fail("no job claimed"))
    # one EXISTS for the paused queues, the held jobs and the other levels' lists; the job's fields read once
    assert sent.get("lmove") == 1 and sent.get("exists") == 1 and sent.get("hgetall") == 1
    assert not {"time", "hmget", "hget", "zrangebyscore", "sismember"} & set(sent), sent


def test_the_end_writes_the_job_hash_once_and_leaves_its_ttl_to_rqs_cleanup(conn) -> None:
    conn.flushdb()
    calls = [producer.TaskCall.build("primes", {"n": 0}, retries=0)] * 2  # the batch's end is not this one's
    job_id = producer.enqueue(conn, calls, QUEUE).jobs[0].id
    worker = new_worker(conn)
    claimed = job_steps.claim(worker, worker.queues)
    claimed.job.ended_at = now()
    sent = commands_sent(
        conn, lambda: job_steps.finish(worker, claimed.job, claimed.queue, claimed.execution, count_in_batch=True)
    )
    # the compaction sets the status and times with the result: one HSET (then one HDEL of the spent fields,
    # and no read of the hash); the TTL comes after it, from RQ's cleanup
    assert sent.get("hset") == 1 and sent.get("hdel") == 1 and "hgetall" not in sent and "pttl" not in sent, sent
    assert conn.hget(f"rq:job:{job_id}", "status") == b"finished"
    assert 0 < conn.ttl(f"rq:job:{job_id}") <= 86400
