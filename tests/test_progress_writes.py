"""What a task's progress reports cost and keep (``worker.progress``): at most one write per job every
PROGRESS_INTERVAL (its start counting as one), the newest report held meanwhile and written once the
interval has passed (by the horse if the job reports nothing more) or with the job's end, each write
one request that reads nothing first and keeps what other writers added to the job's meta. Real
redis-server, real workers (one job at a time, and several: their writes then go in groups)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from rq.job import Job

from tests import group_tasks
from tests.helpers import fetch, status, wait_for
from tests.test_group_commit import QUEUE, end_requests, start
from workqueue import producer
from workqueue.settings import PROGRESS_INTERVAL

STEPS = group_tasks.TASKS[1]


@pytest.fixture
def slowlog(conn: redis.Redis) -> Iterator[None]:
    """Every command in the slow log from now on (restored after)."""
    before = conn.config_get("slowlog-*")
    conn.config_set("slowlog-log-slower-than", 0)
    conn.config_set("slowlog-max-len", 10_000)
    conn.slowlog_reset()
    yield
    conn.config_set("slowlog-log-slower-than", before["slowlog-log-slower-than"])
    conn.config_set("slowlog-max-len", before["slowlog-max-len"])


def steps(conn: redis.Redis, folder: Path) -> Job:
    return producer.enqueue(conn, [producer.TaskCall(STEPS, STEPS.validate({"folder": str(folder)}))], QUEUE).jobs[0]


def progress(conn: redis.Redis, job: Job) -> str | None:
    return (fetch(conn, job).meta.get("progress") or {}).get("message")


def meta_reads(conn: redis.Redis, job: Job) -> int:
    """Requests that read the job's meta (not counting those a script makes: their client is '?:0')."""
    return sum(
        1
        for entry in conn.slowlog_get(10_000)
        if entry["command"].startswith(f"HGET {job.key} meta".encode()) and entry["client_address"] != b"?:0"
    )


@pytest.mark.parametrize("concurrency", [1, 4])
def test_reports_in_a_burst_cost_one_write_and_the_last_is_written_with_the_end(
    conn, processes, redis_url, slowlog, tmp_path, concurrency
) -> None:
    (tmp_path / "go1").touch()
    (tmp_path / "go2").touch()
    start(processes, conn, redis_url, concurrency)
    job = steps(conn, tmp_path)
    wait_for(lambda: status(conn, job) == "finished", 60, "the job's end")
    found = fetch(conn, job)
    assert found.meta["progress"]["message"] == "three" and found.meta["progress"]["percent"] == 75
    assert meta_reads(conn, job) == 0  # before: one read per write
    # All three came within PROGRESS_INTERVAL of the start: "three" goes with the end, in its request
    # (2 only if the horse stalled for the interval between the start and the end: "three" alone first).
    assert end_requests(conn) <= 2  # (before: "one", "two", the end)


@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_held_report_is_written_once_its_interval_has_passed_though_the_job_reports_nothing_more(
    conn, processes, redis_url, tmp_path, concurrency
) -> None:
    start(processes, conn, redis_url, concurrency)
    job = steps(conn, tmp_path)
    wait_for(lambda: progress(conn, job) == "one", 30, 'the report "one", held for its interval after the start')
    (tmp_path / "go1").touch()  # "two" and "three" (held, if within the interval); then it waits for go2
    wait_for(lambda: progress(conn, job) == "three", 20, 'the held report "three", written by the horse')
    assert status(conn, job) == "started"  # before: "three" waited for the job's end
    (tmp_path / "go2").touch()
    wait_for(lambda: status(conn, job) == "finished", 60, "the job's end")
    assert progress(conn, job) == "three"


@pytest.mark.parametrize("concurrency", [1, 4])
def test_notes_other_writers_add_during_the_run_are_kept(conn, processes, redis_url, tmp_path, concurrency) -> None:
    start(processes, conn, redis_url, concurrency)
    job = steps(conn, tmp_path)
    wait_for(lambda: progress(conn, job) == "one", 30, 'the report "one"')
    noted = fetch(conn, job)
    noted.meta["note_a"] = "added while it ran"
    noted.save_meta()
    time.sleep(PROGRESS_INTERVAL + 0.2)  # so that "two" is written at once, "three" held
    (tmp_path / "go1").touch()
    wait_for(lambda: progress(conn, job) in ("two", "three"), 30, 'the report "two"')
    assert fetch(conn, job).meta["note_a"] == "added while it ran"  # merged, not overwritten
    wait_for(lambda: progress(conn, job) == "three", 30, 'the held report "three", written by the horse')
    noted = fetch(conn, job)
    noted.meta["note_b"] = "added before its end"
    noted.save_meta()
    (tmp_path / "go2").touch()
    wait_for(lambda: status(conn, job) == "finished", 60, "the job's end")
    assert progress(conn, job) == "three"
    meta = fetch(conn, job).meta
    assert meta["note_a"] == "added while it ran" and meta["note_b"] == "added before its end"


@pytest.mark.parametrize("concurrency", [1, 2])
def test_a_timeout_that_comes_while_a_report_is_written_ends_the_job(
    conn, processes, redis_url, tmp_path, concurrency
) -> None:
    """The timeout is raised wherever the task is: here inside its report, whose write Redis holds back
    (CLIENT PAUSE WRITE) until the timeout has passed. The progress store, which never fails a job over a
    report, lets it through instead of logging it as a report it could not store: the job fails for its
    timeout, not 3 s later with its horse killed for ignoring it (on a loaded machine the kill may still
    come first, as the job's end waits for the CPU, but the timeout is never taken for a report's error)."""
    task = group_tasks.TASKS[-1]  # report_then_sleep
    consumer = start(processes, conn, redis_url, concurrency)
    job = producer.enqueue(conn, [producer.TaskCall(task, task.validate({"folder": str(tmp_path)}))], QUEUE).jobs[0]
    wait_for(lambda: status(conn, job) == "started", 20, "the job to start")
    conn.execute_command("CLIENT", "PAUSE", 30_000, "WRITE")  # reads go on; the report's write waits
    try:
        (tmp_path / "go1").touch()
        started = fetch(conn, job).started_at
        assert started is not None
        past_timeout = started.timestamp() + group_tasks.REPORT_TIMEOUT + 0.3 - time.time()
        time.sleep(max(0.0, past_timeout))  # the timeout comes while the report waits
    finally:
        conn.execute_command("CLIENT", "UNPAUSE")
    wait_for(lambda: status(conn, job) == "failed", 30, "the job to fail")
    error = fetch(conn, job).latest_result().exc_string
    assert "JobTimeoutException" in error, error
    assert "could not store progress" not in consumer.output()[1]
    if "killed" not in error:
        timeout = f"JobTimeoutException: Task exceeded maximum timeout value ({group_tasks.REPORT_TIMEOUT} seconds)"
        assert error.rstrip().endswith(timeout), error
