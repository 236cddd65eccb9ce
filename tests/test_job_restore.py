"""A job hash of workqueue's own fields is read in one pass (``rq_compat.restore_own_fields``), and leaves the
job exactly as RQ's ``Job.restore`` does, attribute for attribute; any other hash goes through RQ's code."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.utils import now

from tests.test_job_steps import QUEUE, new_worker
from workqueue import producer, rq_compat
from workqueue.jobs import SERIALIZER, CatalogueJob
from workqueue.worker import job_steps


def enqueued(conn: redis.Redis, **options: Any) -> str:
    conn.flushdb()
    call = producer.TaskCall.build("primes", {"n": 3}, **options)
    return producer.enqueue(conn, [call], QUEUE).jobs[0].id


def restored(
    conn: redis.Redis, job_id: str, raw: Any, restore: Callable[[Job, Any], Any], before: dict | None = None
) -> dict:
    """The attributes of a job (``before`` set on it first) after ``restore(job, raw)``, but its logger."""
    job = CatalogueJob(job_id, connection=conn, serializer=SERIALIZER)
    job.__dict__.update(before or {})
    restore(job, raw)
    state = dict(vars(job))
    state.pop("log", None)
    return state


def as_rq_reads_it(conn: redis.Redis, job_id: str, raw: Any, before: dict | None = None) -> dict:
    return restored(conn, job_id, raw, Job.restore, before)  # RQ's own, strptime and all


def as_we_read_it(conn: redis.Redis, job_id: str, raw: Any, before: dict | None = None) -> dict:
    return restored(conn, job_id, raw, CatalogueJob.restore, before)


def hashes(conn: redis.Redis) -> dict[str, tuple[str, dict[bytes, bytes]]]:
    """Job hashes as they stand through a job's life: queued, started, finished (compacted), and odd ones."""
    found: dict[str, tuple[str, dict[bytes, bytes]]] = {}
    job_id = enqueued(conn)
    found["queued"] = job_id, conn.hgetall(f"rq:job:{job_id}")
    found["no-retries"] = (job_id := enqueued(conn, retries=0)), conn.hgetall(f"rq:job:{job_id}")
    found["result-ttl"] = (job_id := enqueued(conn, result_ttl="10m")), conn.hgetall(f"rq:job:{job_id}")
    job_id = enqueued(conn)
    worker = new_worker(conn)
    claim = job_steps.claim(worker, worker.queues)
    found["started"] = job_id, conn.hgetall(f"rq:job:{job_id}")
    claim.job.ended_at = now()
    claim.job._result = {"n": 3, "primes": [2, 3]}
    job_steps.finish(worker, claim.job, claim.queue, claim.execution, count_in_batch=True)
    found["finished"] = job_id, conn.hgetall(f"rq:job:{job_id}")
    raw = dict(found["queued"][1])
    found["unreadable-meta"] = found["queued"][0], {**raw, b"meta": b"{not json"}
    found["unreadable-result"] = found["queued"][0], {**raw, b"result": b"{not json"}
    found["no-created-at"] = found["queued"][0], {k: v for k, v in raw.items() if k != b"created_at"}
    found["uncompressed-data"] = found["queued"][0], {**raw, b"data": b'["task_def.maths.primes", null, [], {}]'}
    found["str-names"] = found["queued"][0], {k.decode(): v for k, v in raw.items()}
    return found


@pytest.fixture
def lived(conn: redis.Redis) -> dict[str, tuple[str, dict[bytes, bytes]]]:
    return hashes(conn)


@pytest.mark.parametrize(
    "name",
    ["queued", "no-retries", "result-ttl", "started", "finished", "unreadable-meta", "unreadable-result",
     "no-created-at", "uncompressed-data", "str-names"],
)  # fmt: skip
def test_our_own_fields_are_read_as_rqs_restore_reads_them(conn, lived, name: str) -> None:
    job_id, raw = lived[name]
    assert {k if isinstance(k, str) else k.decode() for k in raw} <= rq_compat.OWN_FIELDS  # the one-pass way
    ours, theirs = as_we_read_it(conn, job_id, raw), as_rq_reads_it(conn, job_id, raw)
    if name == "no-created-at":  # both read the clock: a moment apart
        assert abs((ours.pop("created_at") - theirs.pop("created_at")).total_seconds()) < 5
    assert ours == theirs


def test_a_job_read_again_is_left_as_rqs_restore_leaves_it(conn, lived) -> None:
    """``Job.refresh`` restores a job already read: what the new hash lacks is reset as RQ resets it."""
    job_id, raw = lived["queued"]
    before = {"_dependency_ids": ["a"], "ttl": 5, "_result": "old", "retry_intervals": [9], "number_of_retries": 2,
              "enqueue_at_front_on_retry": True, "rate_limit_key": "k", "_unreadable_meta": b"x"}  # fmt: skip
    assert as_we_read_it(conn, job_id, raw, before) == as_rq_reads_it(conn, job_id, raw, before)


def test_a_hash_with_any_other_field_goes_through_rqs_restore(conn, lived, monkeypatch) -> None:
    job_id, raw = lived["queued"]
    odd = {**raw, b"dependency_ids": b'["x"]', b"exc_info": b"Traceback"}
    monkeypatch.setattr(rq_compat, "restore_own_fields", lambda *_: pytest.fail("read in one pass"))
    assert as_we_read_it(conn, job_id, odd) == as_rq_reads_it(conn, job_id, odd)
    assert as_we_read_it(conn, job_id, odd)["_dependency_ids"] == ["x"]


def test_a_hash_without_data_is_refused_as_rq_refuses_it(conn) -> None:
    with pytest.raises(NoSuchJobError, match="Unexpected job format"):
        CatalogueJob("x", connection=conn, serializer=SERIALIZER).restore({b"status": b"queued"})
