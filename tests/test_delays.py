"""Delays (``--in 90s|10m|1h30m``, ``--at TIME``, the "When?" prompt, ``when=``/``delay=``, the gateway's
``at``/``in``, the dashboard's When): jobs wait in RQ's scheduled registry and a consumer's scheduler
(polling every second) enqueues them when due, never before. Real redis, real consumers; waits are
bounded and generous, and only orders are asserted, never durations."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
import redis
from click.testing import CliRunner
from flask.testing import FlaskClient
from rq import Queue
from rq.job import Job
from rq.registry import ScheduledJobRegistry

import workqueue
from tests.helpers import Processes, client_for, run_cli, start_consumer, token, wait_for
from workqueue import batches, job_json, timing
from workqueue.cli import producer as producer_cli
from workqueue.errors import BadInput
from workqueue.gateway import create_app
from workqueue.jobs import SERIALIZER


def fetch(conn: redis.Redis, job_id: str) -> Job:
    return Job.fetch(job_id, connection=conn, serializer=SERIALIZER)


def due(conn: redis.Redis, job_id: str, queue: str = "queue_one") -> datetime:
    """When the job is due, as RQ's scheduled registry holds it."""
    score = ScheduledJobRegistry(queue, connection=conn).get_scheduled_time(job_id)
    return score if score.tzinfo else score.replace(tzinfo=UTC)


def batch_id_of(output: str) -> str:
    return re.search(r"batch ([0-9a-f]{12}): enqueued", output).group(1)


def ids_of(output: str) -> list[str]:
    return re.findall(r"^  ([0-9a-f-]{36})$", output, re.M)


def started_at(conn: redis.Redis, job_id: str) -> datetime:
    moment = fetch(conn, job_id).started_at
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, says",
    [
        (["--in", "0"], "--in: 0 is not in the future"),
        (["--in", "0s"], "--in: 0s is not in the future"),
        (["--in", "ten minutes"], "--in: 'ten minutes' is not a duration"),
        (["--in", "10x"], "is not a duration"),
        (["--at", "2020-01-01T03:00"], "--at: 2020-01-01T03:00 is in the past"),
        (["--at", "tomorrow"], "--at: 'tomorrow' is not a time"),
        (["--in", "10m", "--at", "2099-01-01T00:00"], "either --in (a delay) or --at (a time), not both"),
        (["--in", "5000d"], "more than 366 days ahead"),
        (["--in", "10m", "--max-queued", "3"], "does not combine with --in"),
    ],
)
def test_bad_delays_exit_2_with_one_line_and_enqueue_nothing(conn: redis.Redis, args: list[str], says: str) -> None:
    result = run_cli("producer_main.py", "--task", "sleep", "--param", "seconds=1", *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1 and says in result.stderr, result.stderr
    assert not conn.keys("rq:*job*") and not conn.keys("workqueue:batch:*")


def test_the_api_refuses_a_past_time_a_zero_delay_and_both() -> None:
    for kwargs, says in (
        ({"when": datetime.now() - timedelta(minutes=1)}, "when: .* is in the past"),
        ({"delay": 0}, "delay: 0 s is not in the future"),
        ({"delay": timedelta(0)}, "delay: 0 s is not in the future"),
        ({"delay": 5, "when": datetime.now(UTC) + timedelta(hours=1)}, "either when .* or delay"),
        ({"delay": "soon"}, "delay: 'soon' is not a duration"),
    ):
        with pytest.raises(BadInput, match=says):
            workqueue.enqueue("sleep", {"seconds": 1}, **kwargs)


def test_durations_and_times_parse() -> None:
    assert [timing.parse_duration(t).total_seconds() for t in ("90s", "10m", "2h", "1h30m", "45")] == [
        90,
        600,
        7200,
        5400,
        45,
    ]
    now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    assert timing.parse_time("2026-12-01T03:00+01:00", now=now) == datetime(2026, 12, 1, 2, 0, tzinfo=UTC)
    assert timing.parse_time("2026-12-01T03:00Z", now=now) == datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
    naive = timing.parse_time("2026-12-01T03:00", now=now)  # the producer machine's local time
    assert naive == datetime(2026, 12, 1, 3, 0).astimezone(UTC)
    assert timing.parse_when("now") is None and timing.parse_when(" ") is None


# --- a delayed job runs when due, not before -----------------------------------------------------


def test_a_delayed_job_waits_scheduled_then_runs_when_due_never_before(conn: redis.Redis, processes: Processes) -> None:
    start_consumer(processes, conn, 2)
    result = run_cli("producer_main.py", "--task", "sleep", "--param", "seconds=0.1", "--count", "2", "--in", "3s")
    assert result.returncode == 0, result.stderr
    assert "scheduled: runs at" in result.stdout
    job_ids = ids_of(result.stdout)
    assert len(job_ids) == 2
    when = due(conn, job_ids[0])
    now_job = workqueue.enqueue("sleep", {"seconds": 0.1})  # enqueued after, runs first
    now_job.wait(timeout=30)
    assert all(fetch(conn, j).get_status().value == "scheduled" for j in job_ids)
    stats = run_cli("producer_main.py", "--stats", "--queue", "queue_one")
    assert re.search(r"queue queue_one: 0 queued, 0 running, 2 scheduled \(next at .+, in \w+\)", stats.stdout)
    summary = batches.summary(conn, batch_id_of(result.stdout))
    assert (summary.finished, summary.failed, summary.done) == (0, 0, False)  # scheduled jobs count as pending
    wait_for(lambda: all(fetch(conn, j).get_status().value == "finished" for j in job_ids), 30, "the delayed jobs")
    assert all(started_at(conn, j) >= when for j in job_ids)  # never before its time
    assert started_at(conn, job_ids[0]) > started_at(conn, now_job.job_ids[0])


@pytest.mark.slow
def test_wait_on_a_delayed_batch_waits_until_it_has_run(conn: redis.Redis, processes: Processes) -> None:
    start_consumer(processes, conn, 1)
    # 10 s ahead: on a loaded machine the producer took over 3 s to start, and refused a time then past.
    at = (datetime.now().astimezone() + timedelta(seconds=10)).isoformat(timespec="seconds")  # with its offset
    result = run_cli("producer_main.py", "--task", "sleep", "--param", "seconds=0.1", "--at", at, "--wait")
    assert result.returncode == 0, result.stderr
    assert "finished 1, failed 0 of 1" in result.stdout
    (job_id,) = ids_of(result.stdout)
    assert started_at(conn, job_id) >= datetime.fromisoformat(at)


def test_kill_job_cancels_a_scheduled_job(conn: redis.Redis) -> None:
    batch = workqueue.enqueue("sleep", {"seconds": 1}, count=2, delay=timedelta(minutes=10))
    registry = ScheduledJobRegistry("queue_one", connection=conn)
    assert sorted(registry.get_job_ids()) == sorted(batch.job_ids)
    result = run_cli("kill_thread/kill_job.py", batch.job_ids[0])
    assert result.returncode == 0, result.stderr
    assert "cancelled (was scheduled" in result.stdout
    assert fetch(conn, batch.job_ids[0]).get_status().value == "canceled"
    assert registry.get_job_ids() == [batch.job_ids[1]]
    result = run_cli("kill_thread/kill_job.py", "--batch", batch.id)
    assert result.returncode == 0, result.stderr
    assert registry.get_job_ids() == [] and batch.summary().done and batch.summary().failed == 2


def test_the_api_takes_a_time_or_a_delay(conn: redis.Redis, processes: Processes) -> None:
    later = datetime.now() + timedelta(seconds=2)  # naive: local time
    by_time = workqueue.enqueue("sleep", {"seconds": 0.1}, when=later)
    by_delay = workqueue.enqueue_many([("pi", {"samples": 100})], delay=2.5)
    assert due(conn, by_time.job_ids[0]) >= later.astimezone(UTC)
    start_consumer(processes, conn, 1)
    assert by_time.wait(timeout=30).finished == 1 and by_delay.wait(timeout=30).finished == 1
    assert started_at(conn, by_time.job_ids[0]) >= later.astimezone(UTC)


def test_the_interactive_producer_asks_when(monkeypatch: pytest.MonkeyPatch, conn: redis.Redis) -> None:
    monkeypatch.setattr(producer_cli, "can_prompt", lambda: True)
    result = CliRunner().invoke(producer_cli.main, [], input="sleep\n1\nqueue_one\n2\nsoon\n10m\n\n")
    assert result.exit_code == 0, result.output
    assert "When? (now, a delay" in result.output and "'soon' is neither now, a delay" in result.output
    assert ScheduledJobRegistry("queue_one", connection=conn).count == 2
    now = CliRunner().invoke(producer_cli.main, [], input="sleep\n1\nqueue_one\n1\n\n\n")
    assert now.exit_code == 0, now.output
    assert len(Queue("queue_one", connection=conn)) == 1


# --- the gateway and the dashboard ----------------------------------------------------------------


@pytest.fixture
def api(conn: redis.Redis) -> FlaskClient:
    app = create_app(conn)
    app.testing = True
    return app.test_client()


def test_gateway_at_and_in(conn: redis.Redis, api: FlaskClient) -> None:
    document = api.get("/openapi.json").json
    fields = document["components"]["schemas"]["EnqueueBatch"]["properties"]
    assert {"at", "in", "after", "after_any"} <= set(fields)
    for body, field in (
        ({"in": 0}, "in"),
        ({"in": -5}, "in"),
        ({"in": "10m"}, "in"),
        ({"at": "2020-01-01T00:00:00Z"}, "at"),
        ({"at": "tomorrow"}, "at"),
        ({"at": "2099-01-01T00:00:00"}, "at"),  # no offset: the gateway cannot know its client's zone
        ({"at": "2026-13-01T00:00:00Z"}, "at"),
        ({"at": "2099-01-01T00:00:00Z", "in": 5}, "at"),
    ):
        answer = api.post("/jobs", json={"task": "sleep", **body})
        assert answer.status_code == 422 and answer.json["field"] == field, (body, answer.json)
    assert not conn.keys("rq:job:*")
    sent = api.post("/jobs", json={"task": "sleep", "count": 2, "in": 600})
    assert sent.status_code == 201, sent.json
    job = api.get(f"/jobs/{sent.json['job_ids'][0]}").json
    assert job["status"] == "scheduled" and job["waiting_for"] is None
    assert datetime.fromisoformat(job["scheduled_for"]) > datetime.now(UTC) + timedelta(minutes=9)
    at = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    sent = api.post("/batches", json={"tasks": [{"task": "sleep"}], "at": at.isoformat()})
    assert sent.status_code == 201, sent.json
    assert due(conn, sent.json["job_ids"][0]) == at


def test_dashboard_when_field_and_the_scheduled_list_show_the_time(conn: redis.Redis, redis_url: str) -> None:
    client = client_for(redis_url)
    assert 'name="when"' in client.get("/enqueue").text
    form = {"csrf_token": token(client), "task": "sleep", "sleep.seconds": "1", "count": "1", "queue": "queue_one"}
    refused = client.post("/enqueue", data={**form, "when": "yesterday"})
    assert refused.status_code == 422 and "yesterday&#39; is neither now" in refused.text
    assert not conn.keys("rq:job:*")
    sent = client.post("/enqueue", data={**form, "when": "10m"}, follow_redirects=True)
    assert sent.status_code == 200 and "runs at" in sent.text
    (job_id,) = ScheduledJobRegistry("queue_one", connection=conn).get_job_ids()
    listed = client.get("/rq/0/data/jobs/queue_one/scheduled/8/asc/1.json").json["jobs"]
    assert [j["id"] for j in listed] == [job_id]
    assert listed[0]["scheduled_for"] == job_json.iso(due(conn, job_id))
    page = client.get(f"/jobs/{job_id}")
    assert page.status_code == 200 and job_json.iso(due(conn, job_id)) in page.text
