"""What one gateway request costs Redis (issue 18: gateway throughput): an enqueue is one round trip,
the data mark read inside its transaction; a Redis that lost its data is still said once."""

from __future__ import annotations

import pytest
import redis
from flask.testing import FlaskClient

from workqueue.gateway import create_app


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
