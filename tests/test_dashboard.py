"""The dashboard against a real Redis: the command's safety defaults, auth, CSRF, read-only mode,
JSON-only job reading, escaping, live work, history, the enqueue form and the controls (with real
worker processes). The browser's view of the same is in test_browser.py."""

from __future__ import annotations

import json
import pickle
import re
from base64 import b64encode
from pathlib import Path

import pytest
import redis
from flask.testing import FlaskClient
from rq import Queue
from rq.job import Job

from tests.helpers import (
    Processes,
    answers,
    cli_env,
    client_for,
    enqueue_jobs,
    free_port,
    get,
    run_cli,
    start_consumer,
    token,
    wait_for,
    workers,
)
from workqueue import jobstats, producer
from workqueue.jobs import SERIALIZER


@pytest.fixture
def client(redis_url: str) -> FlaskClient:
    return client_for(redis_url)


# The command ---------------------------------------------------------------------------------------


def test_dashboard_serves_rq_dashboard_with_our_json_jobs(conn: redis.Redis, processes: Processes) -> None:
    (job,) = enqueue_jobs(conn, seconds=1)
    port = free_port()
    processes.start("dashboard_main.py", "--port", str(port))
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: answers(base + "/"), 20, "the dashboard to answer")
    status, page = get(base + "/")
    assert status == 200 and b"Live work" in page and b"<title>RQ dashboard" in page
    queues = json.loads(get(base + "/rq/0/data/queues.json")[1])["queues"]
    assert [(q["name"], q["count"]) for q in queues] == [("queue_one", 1)]
    info = json.loads(get(f"{base}/rq/0/data/job/{job.id}.json")[1])
    assert info["description"] == "sleep(seconds=1.0)"


def test_dashboard_listens_on_loopback_by_default(conn: redis.Redis, processes: Processes) -> None:
    import psutil

    port = free_port()
    dashboard = processes.start("dashboard_main.py", "--port", str(port))
    wait_for(lambda: answers(f"http://127.0.0.1:{port}/"), 20, "the dashboard to answer")
    command = psutil.Process(dashboard.pid)
    serving = [command, *command.children(recursive=True)]  # granian listens in its worker
    listening = [c.laddr for p in serving for c in p.net_connections() if c.status == "LISTEN"]
    assert [(a.ip, a.port) for a in listening] == [("127.0.0.1", port)]


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["--bind", "0.0.0.0"], {}, "refusing to listen on 0.0.0.0 without credentials"),
        (["--bind", "::"], {}, "refusing to listen on :: without credentials"),
        (["--bind", "0.0.0.0", "--username", "admin"], {}, "give both a username and a password"),
        (["--bind", "0.0.0.0"], {"WORKQUEUE_DASHBOARD_PASSWORD": "secret"}, "give both a username and a password"),
        (["--port", "0"], {}, "Invalid value for '--port'"),
    ],
)
def test_refuses_to_listen_beyond_loopback_without_credentials(
    redis_url: str, args: list, env: dict, message: str
) -> None:
    result = run_cli("dashboard_main.py", *args, env=cli_env(REDIS_URL=redis_url, **env), timeout=30)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_beyond_loopback_with_credentials_every_request_needs_them(conn: redis.Redis, processes: Processes) -> None:
    port = free_port()
    env = cli_env(WORKQUEUE_DASHBOARD_USERNAME="admin", WORKQUEUE_DASHBOARD_PASSWORD="s3cret-of-16-chars")
    processes.start("dashboard_main.py", "--bind", "0.0.0.0", "--port", str(port), env=env)
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: answers(base + "/"), 20, "the dashboard to answer")
    good = {"Authorization": "Basic " + b64encode(b"admin:s3cret-of-16-chars").decode()}
    bad = {"Authorization": "Basic " + b64encode(b"admin:wrong").decode()}
    for path in (
        "/",
        "/api/live",
        "/metrics",
        "/rq/0/data/queues.json",
        "/static/workqueue.js",
        "/rq/static/css/main.css",
    ):
        assert get(base + path)[0] == 401, path
        assert get(base + path, bad)[0] == 401, path
        assert get(base + path, good)[0] == 200, path


# CSRF, read-only, the methods rq-dashboard got wrong -------------------------------------------------


def test_every_state_change_needs_the_csrf_token_rq_dashboards_included(conn: redis.Redis, client: FlaskClient) -> None:
    jobs = enqueue_jobs(conn, count=2)
    for path in (
        f"/jobs/{jobs[0].id}/stop",
        "/queues/queue_one/cancel",
        "/enqueue",
        "/workers/x/stop",
        f"/rq/job/{jobs[0].id}/delete",
        "/rq/requeue/queue_one",
        "/rq/queue/queue_one/queued/empty",
    ):
        response = client.post(path, headers={"Accept": "application/json"})
        assert response.status_code == 400, path
        assert "CSRF token is missing" in response.json["error"], path
    assert client.post(f"/jobs/{jobs[0].id}/stop", headers={"X-CSRFToken": "forged"}).status_code == 400
    assert Queue("queue_one", connection=conn).count == 2  # nothing was cancelled
    headers = {"X-CSRFToken": token(client), "Accept": "application/json"}
    response = client.post(f"/jobs/{jobs[0].id}/stop", headers=headers)
    assert response.status_code == 200 and response.json["messages"] == [
        f"job {jobs[0].id} cancelled (was queued; now in the canceled registry of queue_one)"
    ]


def test_rq_dashboards_get_requeue_is_refused(conn: redis.Redis, client: FlaskClient) -> None:
    response = client.get("/rq/requeue/queue_one")
    assert response.status_code == 405 and response.headers["Allow"] == "POST"


def test_read_only_hides_and_refuses_every_action(conn: redis.Redis, redis_url: str) -> None:
    (job,) = enqueue_jobs(conn)
    client = client_for(redis_url, read_only=True)
    csrf = token(client)
    for path in (f"/jobs/{job.id}/stop", "/enqueue", "/rq/requeue/queue_one", f"/rq/job/{job.id}/delete"):
        response = client.post(path, headers={"X-CSRFToken": csrf, "Accept": "application/json"})
        assert response.status_code == 403, path
        assert response.json["error"] == "the dashboard is read-only (started with --read-only)"
    assert Job.fetch(job.id, connection=conn, serializer=SERIALIZER).get_status().value == "queued"
    page = client.get(f"/jobs/{job.id}").text
    assert "read-only" in page and ".wq-action { display: none !important; }" in page.replace("\n", " ").replace(
        "  [data-role=requeue-job-btn], [data-role=delete-job-btn], ", ""
    )
    assert 'id="enqueue-form"' not in client.get("/enqueue").text


# JSON only, escaped ----------------------------------------------------------------------------------


class _Trap:
    """Unpickling this writes a file: proof that something unpickled job data."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled"))


def test_job_data_is_never_unpickled(conn: redis.Redis, client: FlaskClient, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_Trap(marker))
    conn.hset(
        "rq:job:trap",
        mapping={
            "data": payload,
            "meta": payload,
            "status": "started",
            "origin": "queue_one",
            "created_at": "2026-01-01T00:00:00.000000Z",
            "description": "trap",
        },
    )
    conn.sadd("rq:queues", "rq:queue:queue_one")
    conn.zadd("rq:wip:queue_one", {"trap:execution1": 9999999999})
    csrf = token(client)
    responses = {
        path: client.get(path)
        for path in (
            "/jobs/trap",
            "/api/jobs/trap",
            "/api/live",
            "/rq/0/view/job/trap",
            "/rq/0/data/workers.json",
            "/rq/0/view/queues",
            "/rq/0/data/queues.json",
            "/metrics",
        )
    }
    for path in ("/rq/job/trap/requeue", "/rq/job/trap/delete", "/jobs/trap/stop", "/jobs/trap/requeue"):
        responses[path] = client.post(path, headers={"X-CSRFToken": csrf, "Accept": "application/json"})
    assert not marker.exists()
    assert responses["/api/jobs/trap"].status_code == 422
    assert "not readable as JSON" in responses["/api/jobs/trap"].json["error"]
    assert responses["/api/live"].status_code == 200 and responses["/api/live"].json["jobs"] == []


def test_scraped_and_failed_job_text_is_served_escaped(
    conn: redis.Redis, client: FlaskClient, processes: Processes, redis_url: str
) -> None:
    script = "<script>alert(1)</script>"
    job = producer.enqueue(conn, [producer.TaskCall.build("scrape", {"url": f"http://127.0.0.1:1/{script}"})]).jobs[0]
    page = client.get(f"/jobs/{job.id}").text
    assert script not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # rq-dashboard's own job page put these into the page as HTML; it now redirects to ours.
    assert client.get(f"/rq/0/view/job/{job.id}").headers["Location"] == f"/jobs/{job.id}"
    assert script not in client.get("/rq/0/view/queues").text


# Live work and history ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_live_work_shows_progress_workers_and_utilisation(
    conn: redis.Redis, client: FlaskClient, processes: Processes
) -> None:
    start_consumer(processes, conn, 2, "queue_one")
    (job,) = enqueue_jobs(conn, seconds=5)

    def progressing() -> dict:
        data = client.get("/api/live").json
        return data if data["jobs"] and (data["jobs"][0]["progress"] or {}).get("percent", 0) > 0 else {}

    data = wait_for(progressing, 20, "the job to report progress")
    (running,) = data["jobs"]
    assert running["id"] == job.id and running["task"] == "sleep" and running["elapsed"] >= 1
    assert running["progress"]["message"] == "sleeping" and running["progress"]["total"] == 5
    states = {w["name"]: w for w in data["workers"]}
    assert len(states) == 2 and sorted(w["state"] for w in states.values()) == ["busy", "idle"]
    busy = states[running["worker"]]
    assert busy["current_job"] == job.id and 0 < busy["utilisation"] <= 1
    assert client.get(f"/jobs?id={job.id}").headers["Location"] == f"/jobs/{job.id}"
    missing = client.get("/jobs?id=no-such-job")
    assert missing.status_code == 404 and "no such job: no-such-job" in missing.text


def test_history_counts_ended_jobs_per_minute_and_samples_backlog(
    conn: redis.Redis, client: FlaskClient, processes: Processes
) -> None:
    enqueue_jobs(conn, "pi", count=6, samples=1000)
    jobstats.sample_backlog(conn)  # what the consumer and the dashboard do each sweep
    assert client.get("/api/history?minutes=5").json["queues"]["queue_one"]["backlog"][-1] == 6
    start_consumer(processes, conn, 2, "queue_one")
    # Over the minutes shown, not the last one alone: a minute may turn while the jobs run (then
    # the last one never holds all 6).
    wait_for(lambda: sum(client.get("/api/history?minutes=5").json["finished"]) >= 6, 30, "6 jobs finished")
    wait_for(
        lambda: client.get("/api/history?minutes=5").json["queues"]["queue_one"]["backlog"][-1] == 0,
        10,
        "the consumer to sample the emptied queue",
    )
    data = client.get("/api/history?minutes=5").json
    assert len(data["minutes"]) == 5 and data["failed"] == [0] * 5
    (pi,) = [t for t in data["tasks"] if t["task"] == "pi"]
    assert pi["finished"] == 6 and pi["run_p50"] is not None and pi["run_p95"] >= pi["run_p50"]
    assert client.get("/api/history?minutes=0").status_code == 400
    assert client.get("/api/history?minutes=100000").status_code == 400


# Controls ---------------------------------------------------------------------------------------------


def test_stop_a_worker_gracefully_and_at_once_from_the_page(
    conn: redis.Redis, client: FlaskClient, processes: Processes
) -> None:
    start_consumer(processes, conn, 2, "queue_one")
    (job,) = enqueue_jobs(conn, seconds=30)
    busy = wait_for(lambda: next((w.name for w in workers(conn) if w.get_current_job_id() == job.id), None), 20)
    idle = next(w.name for w in workers(conn) if w.name != busy)
    csrf = token(client)
    response = client.post(
        f"/workers/{idle}/stop",
        data={"csrf_token": csrf},
        headers={"Accept": "text/html", "Referer": "http://localhost/"},
    )
    assert response.status_code == 303 and response.headers["Location"] == "/"
    assert f"worker {idle} asked to stop" in client.get("/").text  # the flashed outcome
    wait_for(lambda: idle not in [w.name for w in workers(conn)], 20, "the idle worker to leave")
    response = client.post(
        f"/workers/{busy}/stop", data={"csrf_token": csrf, "now": "1"}, headers={"Accept": "application/json"}
    )
    assert response.json["messages"] == [
        f"worker {busy} asked to stop at once; its job {job.id} goes back to the front of its queue"
    ]
    wait_for(lambda: not workers(conn), 20, "the busy worker to leave")
    assert Job.fetch(job.id, connection=conn, serializer=SERIALIZER).get_status().value == "queued"
    unknown = client.post("/workers/nobody/stop", data={"csrf_token": csrf}, headers={"Accept": "application/json"})
    assert unknown.status_code == 404
    assert unknown.json["messages"] == ["no worker named 'nobody'; running workers: none"]


def test_stop_a_running_job_cancel_queued_ones_and_requeue(
    conn: redis.Redis, client: FlaskClient, processes: Processes
) -> None:
    start_consumer(processes, conn, 1, "queue_one")
    first, *waiting = enqueue_jobs(conn, count=3)
    wait_for(lambda: Job.fetch(first.id, connection=conn, serializer=SERIALIZER).get_status().value == "started", 20)
    headers = {"X-CSRFToken": token(client), "Accept": "application/json"}
    cancelled = client.post("/queues/queue_one/cancel", headers=headers).json
    assert cancelled["ok"] and len(cancelled["messages"]) == 2
    stopped = client.post(f"/jobs/{first.id}/stop", headers=headers).json
    assert stopped["messages"] == [f"job {first.id} stopped (stopped, in the failed registry of queue_one)"]
    assert client.get(f"/api/jobs/{first.id}").json["can_requeue"] is True
    assert client.post(f"/jobs/{first.id}/requeue", headers=headers).json["ok"]
    wait_for(
        lambda: Job.fetch(first.id, connection=conn, serializer=SERIALIZER).get_status().value == "started",
        20,
        "the requeued job to run again",
    )
    again = client.post(f"/jobs/{first.id}/requeue", headers=headers).json
    assert again["messages"] == [f"job {first.id} is started; only failed or cancelled jobs can be requeued"]
    requeued = client.post(f"/jobs/{waiting[0].id}/requeue", headers=headers).json  # a cancelled one
    assert requeued["messages"] == [f"job {waiting[0].id} requeued on queue_one"]
    assert Queue("queue_one", connection=conn).get_job_ids() == [waiting[0].id]
    assert client.post("/queues/bad name/cancel", headers=headers).status_code == 404
    client.post("/queues/queue_one/cancel", headers=headers)  # end quickly: nothing left to wait for
    assert client.post(f"/jobs/{first.id}/stop", headers=headers).json["ok"]


# The enqueue form --------------------------------------------------------------------------------------


def test_enqueue_form_is_generated_from_the_catalogue(client: FlaskClient) -> None:
    page = client.get("/enqueue").text
    for field in ('name="sleep.seconds"', 'name="scrape.url"', 'name="primes.n"', 'name="pi.samples"'):
        assert field in page
    seconds = re.search(r'<input[^>]*name="sleep.seconds"[^>]*>', page.replace("\n", " ")).group(0)
    assert 'type="number"' in seconds and 'max="3600' in seconds and 'value="5.0"' in seconds


@pytest.mark.parametrize(
    "form, message",
    [
        (
            {"task": "sleep", "sleep.seconds": "0"},
            "seconds: &#39;0&#39; is out of bounds, expected 0 &lt; seconds &lt;= 3,600",
        ),
        ({"task": "sleep", "sleep.seconds": "soon"}, "seconds: expected a number, got &#39;soon&#39;"),
        ({"task": "nope"}, "unknown task &#39;nope&#39;; the catalogue has: sleep, scrape"),
        (
            {"task": "scrape", "scrape.url": "ftp://x"},
            "url: &#39;ftp://x&#39; must be an http:// or https:// URL with a host",
        ),
        ({"task": "scrape"}, "missing required parameter &#39;url&#39;"),
        ({"task": "sleep", "count": "0"}, "count: &#39;0&#39; is out of bounds, expected 1 &lt;= count &lt;= 100,000"),
        ({"task": "sleep", "queue": "bad name"}, "invalid queue name &#39;bad name&#39;"),
    ],
)
def test_enqueue_form_refuses_bad_input_with_the_producers_messages(
    conn: redis.Redis, client: FlaskClient, form: dict, message: str
) -> None:
    response = client.post("/enqueue", data={"csrf_token": token(client), **form})
    assert response.status_code == 422 and message in response.text
    assert not conn.keys("rq:job:*")  # nothing half-written


def test_enqueue_form_enqueues_a_batch(conn: redis.Redis, client: FlaskClient) -> None:
    form = {"csrf_token": token(client), "task": "sleep", "sleep.seconds": "2", "count": "3", "queue": "queue_two"}
    response = client.post("/enqueue", data=form)
    assert response.status_code == 303
    assert "enqueued 3 × sleep(seconds=2.0) on queue_two" in client.get(response.headers["Location"]).text
    assert Queue("queue_two", connection=conn).count == 3
