"""The dashboard against what a foreign Redis client may leave: jobs whose data, metadata or result
is not JSON (garbage or pickle) in every registry, and URLs that name nothing (an unknown registry,
per_page 0, an instance that does not exist). No page or endpoint answers 500; an unreadable job is
shown as such and never blocks a queue-wide action. And every response carries the CSP."""

from __future__ import annotations

import pickle
import re

import pytest
import redis
from flask.testing import FlaskClient
from rq import Queue
from rq.job import Job

from tests.helpers import client_for, enqueue_jobs, token
from workqueue import recovery
from workqueue.jobs import SERIALIZER

QUEUE = "hostile"
REGISTRIES = ("queued", "started", "finished", "failed", "canceled", "deferred", "scheduled")
KINDS = ("data", "meta", "result")
JSON = {"Accept": "application/json"}


@pytest.fixture
def client(redis_url: str) -> FlaskClient:
    return client_for(redis_url)


def plant(conn: redis.Redis, kind: str, registry: str, queue: str = QUEUE) -> str:
    """A job of ours copied under a new id, then spoilt as a foreign client would: its data
    garbage, its metadata pickled, or a pickled result; and put in ``registry`` of ``queue``."""
    (model,) = enqueue_jobs(conn, "primes", queue="scratch", n=10)
    fields = conn.hgetall(model.key)
    Queue("scratch", connection=conn).empty()
    job_id = f"bad-{kind}-{registry}"
    fields.update({b"origin": queue.encode(), b"status": (registry if registry != "queued" else "queued").encode()})
    if kind == "data":
        fields[b"data"] = b"\x80\x04garbage, not JSON"
    elif kind == "meta":
        fields[b"meta"] = pickle.dumps({"progress": 1})
    else:
        fields[b"status"] = b"finished" if registry in ("queued", "finished") else fields[b"status"]
        conn.xadd(
            f"rq:results:{job_id}",
            {
                "type": 1,
                "worker_name": "",
                "return_value": __import__("base64").b64encode(pickle.dumps({"x": 1})).decode(),
            },
        )
    conn.hset(f"rq:job:{job_id}", mapping=fields)
    conn.sadd("rq:queues", f"rq:queue:{queue}")
    if registry == "queued":
        conn.rpush(f"rq:queue:{queue}", job_id)
    elif registry == "started":
        conn.zadd(f"rq:wip:{queue}", {f"{job_id}:execution1": 9999999999})
    else:
        conn.zadd(f"rq:{registry}:{queue}", {job_id: 9999999999})
    return job_id


def test_unreadable_jobs_in_every_registry_never_make_a_500(conn: redis.Redis, client: FlaskClient) -> None:
    planted = [plant(conn, kind, registry) for kind in KINDS for registry in REGISTRIES]
    paths = [
        "/",
        "/api/live",
        "/api/history?minutes=60",
        "/metrics",
        "/enqueue",
        "/rq/0/view/queues",
        "/rq/0/data/queues.json",
        "/rq/0/view/workers",
        "/rq/0/data/workers.json",
        "/rq/",
        "/rq/0/view/jobs",
    ]
    for registry in REGISTRIES:
        for order in ("asc", "dsc"):
            paths += [
                f"/rq/0/view/jobs/{QUEUE}/{registry}/8/{order}/1",
                f"/rq/0/data/jobs/{QUEUE}/{registry}/8/{order}/1.json",
            ]
    for job_id in planted:
        paths += [
            f"/jobs/{job_id}",
            f"/api/jobs/{job_id}",
            f"/jobs?id={job_id}",
            f"/rq/0/view/job/{job_id}",
            f"/rq/0/data/job/{job_id}.json",
        ]
    for path in paths:
        for accept in ("text/html", "application/json"):
            response = client.get(path, headers={"Accept": accept})
            assert response.status_code < 500, (path, response.status_code, response.text[:300])

    for registry in REGISTRIES:  # each listed, and said to be unreadable
        jobs = client.get(f"/rq/0/data/jobs/{QUEUE}/{registry}/8/asc/1.json").json["jobs"]
        listed = {job["id"]: job for job in jobs}
        for kind in ("data", "meta"):
            assert listed[f"bad-{kind}-{registry}"]["unreadable"] is True
            assert (
                "not readable as JSON" in listed[f"bad-{kind}-{registry}"]["description"]
                or "metadata that is not JSON" in listed[f"bad-{kind}-{registry}"]["description"]
            )
    finished = {job["id"]: job for job in client.get(f"/rq/0/data/jobs/{QUEUE}/finished/8/asc/1.json").json["jobs"]}
    assert finished["bad-result-finished"]["unreadable"] is True  # rq-dashboard's finished list: was a 500

    page = client.get("/jobs/bad-result-finished")  # our job page: was a 500
    assert page.status_code == 200 and "the result is not JSON" in page.text
    assert client.get("/api/jobs/bad-result-finished").json["unreadable"].startswith("the result is not JSON")
    for kind in ("data", "meta"):
        response = client.get(f"/api/jobs/bad-{kind}-failed")
        assert response.status_code == 422 and "JSON" in response.json["error"]
        assert client.get(f"/rq/0/data/job/bad-{kind}-failed.json").status_code == 422


@pytest.mark.parametrize(
    "path",
    [
        "/rq/0/data/jobs/q/queued/0/asc/1.json",
        "/rq/0/data/jobs/q/queued/-1/asc/1.json",
        "/rq/0/data/jobs/q/queued/1000000000000/asc/1.json",
        "/rq/0/data/jobs/q/queued/abc/asc/1.json",
        "/rq/0/data/jobs/q/queued/8/asc/0.json",
        "/rq/0/data/jobs/q/queued/8/sideways/1.json",
        "/rq/0/data/jobs/q/nosuch/8/asc/1.json",
        "/rq/0/view/jobs/q/nosuch/8/asc/1",
        "/rq/0/view/jobs/q/queued/0/asc/1",
        "/rq/0/view/jobs/q/queued/1000000000000/asc/1",
        "/rq/1/view/queues",
        "/rq/1/data/queues.json",
        "/rq/1/view/jobs",
        "/rq/1/data/workers.json",
        "/rq/1/data/job/x.json",
        "/rq/1/view/job/x",
        "/rq/1/data/jobs/q/queued/8/asc/1.json",
        "/rq/0/data/job/no-such-job.json",
    ],
)
def test_urls_that_name_nothing_are_404(conn: redis.Redis, client: FlaskClient, path: str) -> None:
    response = client.get(path, headers=JSON)
    assert response.status_code == 404, response.text[:300]
    assert response.json["error"]


def test_pages_of_a_list_and_their_order(conn: redis.Redis, client: FlaskClient) -> None:
    jobs = enqueue_jobs(conn, "primes", queue="paged", count=5, n=10)
    first = client.get("/rq/0/data/jobs/paged/queued/2/asc/1.json").json
    assert [j["id"] for j in first["jobs"]] == [jobs[0].id, jobs[1].id] and first["pagination"]["num_pages"] == 3
    last = client.get("/rq/0/data/jobs/paged/queued/2/dsc/3.json").json
    assert [j["id"] for j in last["jobs"]] == [jobs[0].id]
    assert [j["id"] for j in client.get("/rq/0/data/jobs/paged/queued/200/dsc/1.json").json["jobs"]] == [
        j.id for j in reversed(jobs)
    ]
    assert client.get("/rq/0/data/jobs/paged/queued/2/asc/9.json").json["jobs"] == []


def fail(conn: redis.Redis, job: Job) -> None:
    queue = Queue(job.origin, connection=conn, serializer=SERIALIZER)
    queue.remove(job.id)
    job.set_status("failed")
    queue.failed_job_registry.add(job, ttl=3600, exc_string="boom")


def test_queue_wide_actions_act_on_the_readable_jobs_and_report_the_unreadable_one(
    conn: redis.Redis, client: FlaskClient
) -> None:
    readable = enqueue_jobs(conn, "primes", queue=QUEUE, count=2, n=10)
    bad_queued = plant(conn, "data", "queued")
    csrf = {"X-CSRFToken": token(client), **JSON}
    reply = client.post(f"/queues/{QUEUE}/cancel", headers=csrf)
    assert reply.status_code == 200, reply.text
    assert [Job.fetch(j.id, connection=conn, serializer=SERIALIZER).get_status().value for j in readable] == [
        "canceled",
        "canceled",
    ]
    assert any(bad_queued in m and "left alone" in m for m in reply.json["messages"])

    failed = enqueue_jobs(conn, "primes", queue=QUEUE, count=2, n=10)
    for job in failed:
        fail(conn, job)
    bad_failed = plant(conn, "meta", "failed")
    for path in (f"/queues/{QUEUE}/requeue-failed", f"/rq/requeue/{QUEUE}"):
        reply = client.post(path, headers=csrf)
        assert reply.status_code == 200 and any(bad_failed in m for m in reply.json["messages"]), (path, reply.text)
        if path.startswith("/queues"):
            assert sorted(Queue(QUEUE, connection=conn).get_job_ids()[-2:]) == sorted(j.id for j in failed)
    reply = client.post(f"/rq/queue/{QUEUE}/failed/empty", headers=csrf)
    assert reply.status_code == 200 and any(bad_failed in m for m in reply.json["messages"])
    assert conn.exists(f"rq:job:{bad_failed}")  # left alone


def test_every_response_carries_the_content_security_policy(conn: redis.Redis, client: FlaskClient) -> None:
    (job,) = enqueue_jobs(conn, "primes", n=10)
    responses = [
        client.get(path, headers={"Accept": accept})
        for accept in ("text/html", "application/json")
        for path in (
            "/",
            "/enqueue",
            f"/jobs/{job.id}",
            "/jobs?id=nope",
            "/api/live",
            "/metrics",
            "/rq/0/view/queues",
            "/rq/0/view/jobs/queue_one/queued/8/asc/1",
            "/rq/0/data/queues.json",
            f"/rq/0/view/job/{job.id}",
            "/static/workqueue.js",
            "/static/rq_dashboard.js",
            "/rq/static/js/jquery-3.5.1.min.js",
            "/favicon.ico",
            "/no/such/page",
            "/rq/1/view/queues",
        )
    ]
    responses.append(client.post("/jobs/x/stop"))  # refused: no CSRF token
    responses.append(client.get("/", headers={"Host": "evil.example"}))  # refused: not our host
    assert {r.status_code for r in responses} >= {200, 302, 400, 404}
    for response in responses:
        policy = response.headers.get("Content-Security-Policy", "")
        directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
        assert directives["script-src"] == "'self'", response.request.path
        assert directives["object-src"] == "'none'" and directives["base-uri"] == "'none'"
        assert directives["frame-ancestors"] == "'none'"


def test_pages_have_no_inline_script(conn: redis.Redis, client: FlaskClient) -> None:
    (job,) = enqueue_jobs(conn, "primes", n=10)
    for path in ("/", "/enqueue", f"/jobs/{job.id}", "/rq/0/view/queues", "/rq/0/view/jobs/queue_one/queued/8/asc/1"):
        page = client.get(path, follow_redirects=True).text
        scripts = re.findall(r"<script\b[^>]*>", page)
        assert scripts and all(" src=" in s for s in scripts), (path, scripts)


def test_a_queue_key_that_is_not_utf8_is_set_aside_and_breaks_no_page_nor_sweep(
    conn: redis.Redis, client: FlaskClient
) -> None:
    (job,) = enqueue_jobs(conn, "primes", queue=QUEUE, n=10)
    conn.sadd("rq:queues", b"rq:queue:\xff\xfe")  # what any foreign client can write
    paths = [
        "/",
        "/api/live",
        "/metrics",
        "/rq/0/view/queues",
        "/rq/0/data/queues.json",
        f"/rq/0/view/jobs/{QUEUE}/queued/8/asc/1",
        "/rq/0/view/jobs",
        f"/jobs/{job.id}",
    ]
    for path in paths:  # the first look sets the key aside; rq-dashboard's own listings work after it
        response = client.get(path, headers=JSON)
        assert response.status_code < 500, (path, response.status_code, response.text[:300])
    assert conn.sismember("rq:queues", b"rq:queue:\xff\xfe") == 0
    assert conn.sismember("workqueue:foreign-queues", b"rq:queue:\xff\xfe") == 1
    assert QUEUE in [q["name"] for q in client.get("/rq/0/data/queues.json").json["queues"]]
    conn.sadd("rq:queues", b"rq:queue:\xff\xfd")
    conn.sadd("rq:workers", b"rq:worker:\xff")
    assert recovery.sweep(conn) == ([], [])  # no UnicodeDecodeError, nothing of ours touched
    assert Queue(QUEUE, connection=conn).get_job_ids() == [job.id]
