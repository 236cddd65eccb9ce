"""A job's success written out directly (``workqueue.worker.end_words``, ``lua/job_success.lua``) leaves
Redis as the end ``job_steps.finish`` builds through RQ's own objects does, key for key, and as RQ's own
end does (``test_job_steps``'s snapshots); it is refused for the ends it does not cover, which still go
through RQ's objects."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis
from rq import Worker
from rq.utils import now

from tests.test_job_steps import QUEUE, new_worker, snapshot
from workqueue import producer, tallies
from workqueue.worker import end_words, job_steps
from workqueue.worker.held_ends import HeldEnds


def claimed(conn: redis.Redis, **options: Any) -> tuple[Any, Any, str]:
    """A fresh database with one job of ``primes`` (``options``: TaskCall.build's), claimed and ended by a
    worker: the worker, the claim and the batch id."""
    conn.flushdb()
    batch = producer.enqueue(conn, [producer.TaskCall.build("primes", {"n": 0}, retries=0, **options)], QUEUE)
    worker = new_worker(conn)
    claim = job_steps.claim(worker, worker.queues)
    claim.job.ended_at = now()
    claim.job._result = {"n": 0, "primes": 0}
    return worker, claim, batch.batch_id


def handed_end(worker: Any, claim: Any, monkeypatch: pytest.MonkeyPatch, *, direct: bool, count: bool = True) -> dict:
    """The end ``job_steps.finish`` hands a worker (as in a one-job horse), built directly or through RQ."""
    with monkeypatch.context() as patched:
        patched.setattr(job_steps, "_handed", [])
        if not direct:
            patched.setattr(end_words, "success", lambda *args: None)  # the way every other end takes
        worker.executions[claim.execution.id] = claim.execution  # as the claim left it (an end forgets it)
        assert job_steps.finish(worker, claim.job, claim.queue, claim.execution, count_in_batch=count)
        [end] = job_steps.handed_ends()
    return end


def written(
    conn: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    *,
    direct: bool,
    count: bool = True,
    in_group: bool = True,
    result: Any = None,
    before_end: Callable[[Any], object] = lambda claim: None,
    **options: Any,
) -> tuple[dict[str, Any], dict]:
    """A fresh database's one job, claimed, ended (built directly or through RQ's objects) and written
    as the worker writes what its horse hands it: the database's snapshot, and the end. ``before_end(claim)``
    is called between the claim and the end."""
    worker, claim, batch_id = claimed(conn, **options)
    before_end(claim)
    if result is not None:
        claim.job._result = result
    if not in_group:
        claim.job.group_id = None
    end = handed_end(worker, claim, monkeypatch, direct=direct, count=count)
    assert worker.executions == {}  # forgotten, as RQ's cleanup_execution does
    held = HeldEnds(0.02)
    held.add([end])
    assert held.write(conn, worker.name) and not len(held)
    tallies.tally(conn).flush()  # the worker's counters and the statistics: written once a second
    return snapshot(conn, {claim.job.id: "JOB", batch_id: "BATCH", claim.execution.id: "EXECUTION"}), end


@pytest.mark.parametrize(
    "options, count, in_group",
    [
        ({}, True, True),  # a job of a batch, kept a day
        ({"result_ttl": "10m"}, True, True),  # kept as long as its enqueue says
        ({}, False, True),  # not counted in its batch (RQ's callback does it)
        ({}, True, False),  # a job in no batch (RQ's group)
    ],
    ids=["batch", "result-ttl", "not-counted", "no-group"],
)
def test_a_success_written_directly_leaves_redis_as_the_end_rqs_objects_build_does(
    conn, monkeypatch, options: dict[str, Any], count: bool, in_group: bool
) -> None:
    by_rq, rqs_end = written(conn, monkeypatch, direct=False, count=count, in_group=in_group, **options)
    direct, end = written(conn, monkeypatch, direct=True, count=count, in_group=in_group, **options)
    assert direct == by_rq
    assert end["guard"][:3] == rqs_end["guard"][:3] and len(end["words"]) < len(rqs_end["words"])


def test_a_dependent_jobs_dependencies_set_gets_its_ttl_as_rqs_end_gives_it(conn, monkeypatch) -> None:
    """The direct end skips the EXPIRE of a dependencies set only for a job enqueued with none (RQ
    writes that set for no other): a job that depends on another has it expire with the job."""

    def depend(claim: Any) -> None:
        claim.job._dependency_ids = ["other"]  # as RQ's Job.restore reads them from 'dependency_ids'
        conn.sadd(claim.job.dependencies_key, "other")

    direct = written(conn, monkeypatch, direct=True, before_end=depend)[0]
    assert direct == written(conn, monkeypatch, direct=False, before_end=depend)[0]
    assert direct["rq:job::JOB:dependencies"][1] != -1  # it expires with the job (RQ names it so)


def test_a_long_result_is_cut_in_its_batch_event_as_rqs_way_cuts_it(conn, monkeypatch) -> None:
    result = {"text": "é" * 5000}
    assert (
        written(conn, monkeypatch, direct=True, result=result)[0]
        == written(conn, monkeypatch, direct=False, result=result)[0]
    )


def test_a_command_redis_refuses_in_a_direct_end_stops_none_of_the_rest_and_is_told(conn, monkeypatch, caplog) -> None:
    """As a transaction of RQ's objects' commands: the finished registry of the wrong type refuses its
    ZADD, every other write is made, and the end's replies carry the refusal (logged by settle_end)."""

    def refused(direct: bool) -> dict[str, Any]:
        def break_the_registry(claim: Any) -> None:
            conn.set(claim.queue.finished_job_registry.key, "not a sorted set")

        caplog.clear()
        found = written(conn, monkeypatch, direct=direct, before_end=break_the_registry)[0]
        assert "refused part of its record" in caplog.text and "WRONGTYPE" in caplog.text
        return found

    found = refused(direct=True)
    assert found == refused(direct=False)
    assert found["rq:job:JOB"][2] != [] and dict(found["rq:job:JOB"][2])[b"status"] == b"finished"
    assert "rq:wip:" + QUEUE not in found  # the started registry emptied all the same


@pytest.mark.parametrize(
    "options, handed",
    [({"result_ttl": 0}, True), ({"limit_key": "fidelity"}, True), ({"unique": True}, False)],
    ids=["not-kept", "limit-key", "unique"],
)
def test_an_end_it_does_not_cover_is_refused_and_recorded_through_rqs_objects(
    conn, monkeypatch, options: dict[str, Any], handed: bool
) -> None:
    worker, claim, _ = claimed(conn, **options)
    ttl = claim.job.get_result_ttl(worker.default_result_ttl)
    assert end_words.success(worker, claim.job, claim.execution, ttl, None) is None
    with monkeypatch.context() as patched:
        patched.setattr(job_steps, "_handed", [])
        assert job_steps.finish(worker, claim.job, claim.queue, claim.execution, count_in_batch=True)
        ends = job_steps.handed_ends()
    # Built by RQ's objects: handed to the worker, or (a unique key's release, a script the worker's
    # request cannot run) written by the horse at once.
    assert len(ends) == handed
    if not handed:
        assert conn.hget(claim.job.key, "status") == b"finished"


def test_a_success_written_directly_leaves_redis_as_rqs_own_end_does(conn, monkeypatch) -> None:
    def run(record) -> dict[str, Any]:
        worker, claim, batch_id = claimed(conn)
        record(worker, claim)
        tallies.tally(conn).flush()  # the worker's counters and the statistics: written once a second
        return snapshot(conn, {claim.job.id: "JOB", batch_id: "BATCH", claim.execution.id: "EXECUTION"})

    def rqs(worker: Any, claim: Any) -> None:
        job = claim.job
        job.success_callback(job, conn, job._result)  # batches.task_finished, as RQ calls it
        Worker.handle_job_success(worker, job, claim.queue, claim.queue.started_job_registry, claim.execution)

    def handed(worker: Any, claim: Any) -> None:
        held = HeldEnds(0.02)
        held.add([handed_end(worker, claim, monkeypatch, direct=True)])
        assert held.write(conn, worker.name) and not len(held)  # as the worker writes what its horse hands it

    assert run(handed) == run(rqs)


def test_a_success_redis_refuses_for_want_of_memory_writes_nothing_until_it_is_taken(conn, monkeypatch) -> None:
    """The end's first write is one Redis refuses while out of memory (its compaction's HSET, before the
    HDEL Redis would let through), so a refused end leaves Redis as it was, and is written once memory is back."""
    worker, claim, batch_id = claimed(conn)
    names = {claim.job.id: "JOB", batch_id: "BATCH", claim.execution.id: "EXECUTION"}
    held = HeldEnds(0.02)
    held.add([handed_end(worker, claim, monkeypatch, direct=True)])
    before = snapshot(conn, names)
    conn.config_set("maxmemory-policy", "noeviction")
    conn.config_set("maxmemory", 1)
    try:
        assert not held.write(conn, worker.name) and len(held) == 1  # refused: still held, for the next try
        assert snapshot(conn, names) == before
    finally:
        conn.config_set("maxmemory", 0)
    assert held.write(conn, worker.name) and not len(held)
    fields = conn.hgetall(claim.job.key)
    assert fields[b"status"] == b"finished" and b"result" in fields and b"timeout" not in fields
