"""Unique jobs: a second enqueue of a key that a waiting or running job holds returns that job; two
producers racing create one job; the key frees at the job's end (or after --unique-for)."""

from __future__ import annotations

import threading

import pytest
import redis
from rq import Queue

from tests.helpers import Processes, run_cli, start_consumer, wait_for
from workqueue import batches, producer, unique
from workqueue.errors import BadInput


def call(seconds: float = 30, **options) -> producer.TaskCall:
    return producer.TaskCall.build("sleep", {"seconds": seconds}, **options)


def test_a_duplicate_returns_the_job_already_queued_and_its_batch_still_ends(conn) -> None:
    first = producer.enqueue(conn, [call(unique=True)])
    again = producer.enqueue(conn, [call(unique=True), call(seconds=31, unique=True)])
    assert [j.id for j in again.jobs] != [] and again.existing == {0: first.jobs[0].id}
    assert Queue("queue_one", connection=conn).count == 2
    only_old = producer.enqueue(conn, [call(unique=True)] * 3)
    assert only_old.jobs == [] and set(only_old.existing.values()) == {first.jobs[0].id}
    summary = batches.summary(conn, only_old.batch_id)
    assert summary.done and summary.total == 0
    assert list(batches.follow(conn, only_old.batch_id, timeout=5)) == []


def test_the_key_is_the_task_and_its_parameters_or_the_one_given(conn) -> None:
    a = producer.enqueue(conn, [call(unique_key="nightly"), call(seconds=5, unique_key="nightly")])
    assert len(a.jobs) == 1 and a.existing == {1: a.jobs[0].id}
    b = producer.enqueue(conn, [call(seconds=5, unique=True), call(seconds=5.0, unique=True)])
    assert len(b.jobs) == 1 and b.existing == {1: b.jobs[0].id}  # the same parameters once validated


def test_racing_producers_create_one_job(redis_url: str, conn) -> None:
    ids: list[str] = []
    start = threading.Barrier(8)

    def produce() -> None:
        connection = redis.Redis.from_url(redis_url)
        start.wait()
        sub = producer.enqueue(connection, [call(unique_key="race")])
        ids.extend([j.id for j in sub.jobs] + list(sub.existing.values()))

    threads = [threading.Thread(target=produce) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(ids) == 8 and len(set(ids)) == 1
    assert Queue("queue_one", connection=conn).count == 1


def test_the_key_frees_at_the_end_or_after_unique_for(conn, processes: Processes) -> None:
    start_consumer(processes, conn, 1)
    first = producer.enqueue(conn, [call(0.2, unique_key="k")])
    batches.wait(conn, first.batch_id, timeout=30)
    second = producer.enqueue(conn, [call(0.2, unique_key="k")])
    assert len(second.jobs) == 1 and second.jobs[0].id != first.jobs[0].id  # freed at the end
    batches.wait(conn, second.batch_id, timeout=30)
    held = producer.enqueue(conn, [call(0.2, unique_key="h", unique_for="10m")])
    batches.wait(conn, held.batch_id, timeout=30)
    wait_for(lambda: conn.ttl(unique.redis_key("h")) > 0, 10, "the key's hold after the end")
    again = producer.enqueue(conn, [call(0.2, unique_key="h", unique_for="10m")])
    assert again.jobs == [] and again.existing == {0: held.jobs[0].id}  # held for 10 minutes after


def test_a_failed_job_frees_its_key(conn, processes: Processes) -> None:
    start_consumer(processes, conn, 1)
    bad = producer.enqueue(
        conn, [producer.TaskCall.build("scrape", {"url": "http://127.0.0.1:1/"}, retries=0, unique=True)]
    )
    assert batches.wait(conn, bad.batch_id, timeout=60).failed == 1
    again = producer.enqueue(
        conn, [producer.TaskCall.build("scrape", {"url": "http://127.0.0.1:1/"}, retries=0, unique=True)]
    )
    assert len(again.jobs) == 1


def test_the_producer_says_how_many_were_new(conn, processes: Processes) -> None:
    args = ("producer_main.py", "--task", "sleep", "--param", "seconds=30", "--unique")
    first = run_cli(*args, "--count", "3")
    assert first.returncode == 0 and "1 new, 2 already queued" in first.stdout, first.stdout + first.stderr
    waited = run_cli(*args, "--wait", "--quiet", timeout=60)
    assert waited.returncode == 0 and "0 new, 1 already queued" in waited.stdout
    assert "finished 0, failed 0 of 0" in waited.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--unique", "--unique-key", "k"], "give --unique (the task and its parameters) or --unique-key K, not both"),
        (["--unique-for", "10m"], "--unique-for goes with --unique or --unique-key K"),
        (["--unique", "--unique-for", "10x"], "unique for: expected a duration such as 90s, 10m, 2h or 1d"),
        (["--unique-key", " "], "unique key: expected 1 to 512 characters of text"),
    ],
)
def test_bad_unique_options_exit_2_with_one_line(conn, args: list[str], message: str) -> None:
    result = run_cli("producer_main.py", "--task", "sleep", "--param", "seconds=1", *args)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert Queue("queue_one", connection=conn).count == 0


def test_the_python_api_rejects_both_kinds_of_key() -> None:
    with pytest.raises(BadInput, match="not both"):
        call(unique=True, unique_key="k")


def test_the_gateway_says_which_jobs_already_existed(conn) -> None:
    from workqueue.gateway import create_app

    app = create_app(conn)
    app.testing = True
    api = app.test_client()
    body = {"task": "sleep", "params": {"seconds": 30}, "unique": {}}
    first = api.post("/jobs", json=body)
    assert first.status_code == 201 and first.json["existing_job_ids"] == []
    again = api.post("/jobs", json={**body, "count": 2})
    assert again.status_code == 201 and again.json["job_ids"] == []
    assert again.json["existing_job_ids"] == first.json["job_ids"] * 2
    keyed = api.post("/batches", json={"tasks": [{"task": "pi", "params": {}}], "unique": {"key": "k", "for": 600}})
    assert keyed.status_code == 201 and len(keyed.json["job_ids"]) == 1
    bad_specs = [({"key": ""}, "unique.key"), ({"for": 0}, "unique.for"), ({"other": 1}, "unique"), ([], "unique")]
    for bad, field in bad_specs:
        refused = api.post("/jobs", json={**body, "unique": bad})
        assert refused.status_code == 422 and refused.json["field"] == field, refused.json
    assert Queue("queue_one", connection=conn).count == 2


def test_the_dashboard_form_enqueues_unique_jobs(redis_url: str, conn) -> None:
    from tests.helpers import client_for, token

    client = client_for(redis_url)
    assert 'name="unique"' in client.get("/enqueue").text
    form = {"csrf_token": token(client), "task": "sleep", "sleep.seconds": "30", "unique": "1"}
    assert client.post("/enqueue", data=form).status_code == 303
    again = client.post("/enqueue", data={**form, "count": "2"})
    assert again.status_code == 303
    assert "0 new, 2 already queued" in client.get(again.headers["Location"]).text
    keyed = client.post("/enqueue", data={**form, "unique": "", "unique_key": "k", "csrf_token": token(client)})
    assert keyed.status_code == 303 and Queue("queue_one", connection=conn).count == 2
    refused = client.post("/enqueue", data={**form, "unique_key": " " * 3, "csrf_token": token(client)})
    assert refused.status_code == 422 and "unique key: expected 1 to 512 characters" in refused.text


def test_a_cancelled_job_frees_its_key(conn) -> None:
    from workqueue import control

    first = producer.enqueue(conn, [call(unique_key="c")])
    assert producer.enqueue(conn, [call(unique_key="c")]).existing == {0: first.jobs[0].id}
    control.stop_job(conn, first.jobs[0].id, by="test")
    again = producer.enqueue(conn, [call(unique_key="c")])
    assert len(again.jobs) == 1 and again.jobs[0].id != first.jobs[0].id


def test_unique_applies_to_a_file_of_tasks(conn, tmp_path) -> None:
    path = tmp_path / "tasks.jsonl"
    line = '{"task": "sleep", "params": {"seconds": 30}}\n'
    path.write_text(line * 2 + '{"task": "sleep", "params": {"seconds": 31}}\n')
    result = run_cli("producer_main.py", "--from-file", str(path), "--unique")
    assert result.returncode == 0 and "2 new, 1 already queued" in result.stdout, result.stdout + result.stderr
