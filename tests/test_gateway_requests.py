"""What one gateway request costs Redis (issue 18: gateway throughput): an enqueue is one round trip,
the data mark read inside its transaction; a Redis that lost its data is still said once."""

from __future__ import annotations

import pytest
import redis
from flask.testing import FlaskClient
from rq.job import Job

import task_def
from workqueue.gateway import create_app
from workqueue.jobs import SERIALIZER


@pytest.fixture
def api(conn: redis.Redis) -> FlaskClient:
    app = create_app(conn)
    app.testing = True
    return app.test_client()


def test_an_enqueue_request_is_one_round_trip(conn: redis.Redis, api: FlaskClient, sends: list[bytes]) -> None:
    assert api.post("/jobs", json={"task": "sleep", "params": {"seconds": 1}}).status_code == 201
    sends.clear()
    one = api.post("/jobs", json={"task": "sleep", "params": {"seconds": 1}, "count": 2})
    many = api.post("/batches", json={"tasks": [{"task": "sleep", "params": {"seconds": 1}}] * 3, "queue": "b"})
    assert one.status_code == many.status_code == 201
    # each one script call (lua/enqueue.lua): the batch, its jobs and the data mark's check together
    assert len(sends) == 2 and all(b"\r\nEVALSHA\r\n" in sent[:20] for sent in sends), sends
    assert conn.llen("rq:queue:queue_one") == 3 and conn.llen("rq:queue:b") == 3
    sends.clear()
    assert api.get("/queues").status_code == 200 and len(sends) >= 2  # a read checks the mark first


def test_a_redis_that_lost_its_data_takes_the_enqueue_and_the_next_read_says_so_once(
    conn: redis.Redis, api: FlaskClient
) -> None:
    first = api.post("/jobs", json={"task": "sleep", "params": {"seconds": 1}}).get_json()["job_ids"][0]
    conn.flushall()  # as a restart without persistence
    answer = api.post("/jobs", json={"task": "sleep", "params": {"seconds": 1}})
    assert answer.status_code == 201, answer.get_json()
    assert conn.exists(f"rq:job:{answer.get_json()['job_ids'][0]}")  # the jobs are where it says
    lost = api.get("/queues")
    assert lost.status_code == 503 and "lost its data" in lost.get_json()["error"]
    assert api.get("/queues").status_code == 200
    conn.flushall()
    after = api.post("/jobs", json={"task": "sleep", "after": [first]})
    assert after.status_code == 503 and "lost its data" in after.get_json()["error"], after.get_json()
    assert not conn.keys("rq:job:*")


def test_a_batch_validates_each_distinct_entry_once(
    conn: redis.Redis, api: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entries equal to one before them (task, parameters' names, types and values) are that call
    again; an entry that only compares equal (5.0 for 5, true for 1) is its own."""
    validated: list[dict[str, object]] = []
    validate = task_def.Task.validate

    def counted(task: task_def.Task, given: dict[str, object], strict: bool = False) -> dict[str, object]:
        validated.append(dict(given))
        return validate(task, given, strict)

    monkeypatch.setattr(task_def.Task, "validate", counted)
    same = api.post("/batches", json={"tasks": [{"task": "primes", "params": {"n": 5}}] * 500})
    assert same.status_code == 201 and len(same.json["job_ids"]) == len(set(same.json["job_ids"])) == 500
    assert validated == [{"n": 5}]
    validated.clear()
    entries = [{"task": "primes", "params": {"n": n}} for n in (5, 6, 5.0, 6)] + [{"task": "sleep"}] * 2
    mixed = api.post(
        "/batches", json={"tasks": entries + [{"task": "sleep", "params": {"seconds": s}} for s in (0.5, 0.5)]}
    )
    assert mixed.status_code == 201 and len(mixed.json["job_ids"]) == 8
    assert validated == [{"n": 5}, {"n": 6}, {"n": 5.0}, {}, {"seconds": 0.5}]
    jobs = [Job.fetch(job_id, connection=conn, serializer=SERIALIZER) for job_id in mixed.json["job_ids"]]
    assert [job.kwargs for job in jobs[:4]] == [{"n": 5}, {"n": 6}, {"n": 5}, {"n": 6}]
    refused = api.post("/batches", json={"tasks": [{"task": "primes", "params": {"n": v}} for v in (1, True)]})
    assert refused.status_code == 422 and refused.json["field"] == "tasks[1].params.n"
