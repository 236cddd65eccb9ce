"""Pausing one queue: no worker starts its jobs (running ones finish, enqueueing works, the
worker's other queues go on), resume lets them run, drain waits for it to empty; bad input."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import redis

from tests.helpers import ROOT, enqueue_jobs, fetch, run_cli, start_consumer, wait_for
from workqueue import pausing, producer
from workqueue.worker import claiming
from workqueue.worker.catalogue_worker import CatalogueWorker


def _queue_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "workqueue", "queue", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def _statuses(conn, jobs) -> list[str]:
    return [fetch(conn, j).get_status().value for j in jobs]


def test_a_paused_queue_starts_nothing_while_the_workers_other_queue_runs_then_resume_runs_it(
    conn, redis_url, processes
) -> None:
    consumer = start_consumer(processes, conn, 1, "held", "other")
    running = enqueue_jobs(conn, "sleep", "held", 1, seconds=2)[0]
    wait_for(lambda: fetch(conn, running).get_status().value == "started", 15, "the first job started")
    done = _queue_cli("pause", "held")
    assert done.returncode == 0, done.stderr
    held = enqueue_jobs(conn, "sleep", "held", 3, seconds=0.1)  # enqueueing while paused works
    others = enqueue_jobs(conn, "sleep", "other", 3, seconds=0.1)
    wait_for(lambda: _statuses(conn, others) == ["finished"] * 3, 20, "the other queue's jobs")
    assert fetch(conn, running).get_status().value == "finished"  # the running job finished
    time.sleep(3)
    assert _statuses(conn, held) == ["queued"] * 3
    status = run_cli("producer_main.py", "--stats", "--queue", "held")
    assert "paused" in status.stdout, status.stdout
    done = _queue_cli("resume", "held")
    assert done.returncode == 0, done.stderr
    wait_for(lambda: _statuses(conn, held) == ["finished"] * 3, 20, "the held jobs after resume")
    assert consumer.poll() is None


def test_a_worker_of_one_paused_queue_blocked_waiting_takes_nothing(conn, redis_url, processes) -> None:
    start_consumer(processes, conn, 2, "solo")
    time.sleep(1)  # both workers idle, waiting on the queue
    pausing.pause(conn, "solo")
    time.sleep(1)
    jobs = enqueue_jobs(conn, "sleep", "solo", 2, seconds=0.1)
    time.sleep(3)
    assert _statuses(conn, jobs) == ["queued"] * 2
    pausing.resume(conn, "solo")
    wait_for(lambda: _statuses(conn, jobs) == ["finished"] * 2, 20, "the jobs after resume")


def test_drain_waits_for_the_queue_to_empty_and_its_jobs_to_end(conn, redis_url, processes) -> None:
    jobs = enqueue_jobs(conn, "sleep", "dr", 3, seconds=0.5)
    start_consumer(processes, conn, 1, "dr")
    done = _queue_cli("drain", "dr", "--timeout", "60")
    assert done.returncode == 0, done.stderr
    assert _statuses(conn, jobs) == ["finished"] * 3
    assert "drained" in done.stdout


def test_drain_of_a_paused_queue_times_out_with_exit_1(conn, redis_url) -> None:
    pausing.pause(conn, "stuck")
    enqueue_jobs(conn, "sleep", "stuck", 1, seconds=0.1)
    done = _queue_cli("drain", "stuck", "--timeout", "1")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == ["error: queue stuck still has 1 waiting and 0 running after 1 s"]


def test_bad_input_is_one_line_and_exit_2(conn, redis_url) -> None:
    assert _queue_cli("pause", "twice").returncode == 0
    for args, words in (
        (("pause", "twice"), "already paused"),
        (("resume", "never"), "is not paused"),
        (("pause", "bad name!"), "invalid queue name"),
        (("resume", ""), "invalid queue name"),
        (("drain", "q", "--timeout", "0"), "--timeout"),
    ):
        done = _queue_cli(*args)
        assert done.returncode == 2, (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], (args, lines)
    assert pausing.paused_names(conn) == {"twice"}


def test_the_gateway_pauses_and_resumes_and_shows_the_state(conn) -> None:
    from workqueue.gateway import create_app

    api = create_app(conn).test_client()
    assert api.post("/queues/gw/pause", json={}).status_code == 200
    again = api.post("/queues/gw/pause", json={})
    assert again.status_code == 409 and "already paused" in again.json["error"]
    assert api.post("/queues/bad%20name/pause", json={}).status_code == 422
    assert api.post("/queues/never/resume", json={}).status_code == 409
    api.post("/jobs", json={"task": "pi", "queue": "gw"})
    shown = {q["name"]: q for q in api.get("/queues").json["queues"]}
    assert shown["gw"]["paused"] is True and shown["gw"]["queued"] == 1
    assert api.post("/queues/gw/resume", json={}).status_code == 200
    assert pausing.paused_names(conn) == set()


def test_metrics_show_paused_queues(conn) -> None:
    from workqueue.dashboard import metrics

    pausing.pause(conn, "m1")
    text = metrics.render(conn).decode()
    assert 'workqueue_queue_paused{queue="m1"} 1.0' in text


def test_the_dashboard_pauses_and_resumes_with_the_csrf_token_and_shows_the_state(conn, redis_url) -> None:
    from tests.helpers import client_for, token

    client = client_for(redis_url)
    enqueue_jobs(conn, "sleep", "dash", 1, seconds=0.1)
    assert client.post("/queues/dash/pause", headers={"Accept": "application/json"}).status_code == 400  # no token
    assert pausing.paused_names(conn) == set()
    headers = {"X-CSRFToken": token(client), "Accept": "application/json"}
    paused = client.post("/queues/dash/pause", headers=headers)
    assert paused.status_code == 200 and pausing.is_paused(conn, "dash")
    again = client.post("/queues/dash/pause", headers=headers)
    assert again.status_code != 200 and "already paused" in again.json["messages"][0]
    shown = {q["name"]: q for q in client.get("/api/live").json["queues"]}
    assert shown["dash"]["paused"] is True and shown["dash"]["waiting"] == 1
    assert client.post("/queues/dash/resume", headers=headers).status_code == 200
    assert not pausing.is_paused(conn, "dash")
    assert 'id="live-queues"' in client.get("/").text
    read_only = client_for(redis_url, read_only=True)
    refused = read_only.post(
        "/queues/dash/pause", headers={"X-CSRFToken": token(read_only), "Accept": "application/json"}
    )
    assert refused.status_code == 403 and not pausing.is_paused(conn, "dash")


def test_the_consumers_status_line_names_its_paused_queues(conn, redis_url, processes) -> None:
    from workqueue.cli.consumer import status_line
    from workqueue.worker.pool import PoolStatus

    assert status_line(PoolStatus(paused=["a", "b"])).endswith("queued 0 | paused: a, b")
    assert "paused" not in status_line(PoolStatus())
    pausing.pause(conn, "shown")
    consumer = processes.start("consumer_main.py", "--workers", "1", "--queue", "shown", "--queue", "other")
    wait_for(lambda: "paused: shown" in consumer.output()[0], 20, "the status line to name the paused queue")


def test_the_openapi_document_has_the_pause_and_resume_routes(conn) -> None:
    from workqueue.gateway import openapi

    paths = openapi.document()["paths"]
    assert paths["/queues/{name}/pause"]["post"]["responses"].keys() >= {"200", "409", "422"}
    assert "/queues/{name}/resume" in paths


def test_a_resume_wakes_a_worker_whose_queues_are_all_paused_at_once(conn, redis_url, monkeypatch) -> None:
    # A worker with every queue paused sleeps between looks; the resume is published to it (pausing.WAKE_CHANNEL).
    monkeypatch.setattr(claiming, "IDLE_LOOK_GAP", 30.0)  # its own next look: 30 s after the last
    conn.flushdb()
    pausing.pause(conn, "woken")
    job_id = producer.enqueue(conn, [producer.TaskCall.build("primes", {"n": 0})], "woken").jobs[0].id
    worker = CatalogueWorker(["woken"], connection=conn, name="woken-worker")
    worker.register_birth()
    worker.subscribe()
    resume = threading.Timer(0.5, lambda: pausing.resume(redis.Redis.from_url(redis_url), "woken"))
    try:
        resume.start()
        began = time.monotonic()
        job, _queue = worker._wait_and_claim(60)
        assert job.id == job_id
        assert time.monotonic() - began < 15  # woken by the resume, not by its look 30 s on
    finally:
        resume.cancel()
        resume.join()
        worker.unsubscribe()
