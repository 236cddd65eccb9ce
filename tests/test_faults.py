"""The fault matrix: each fault against a real redis-server and real worker processes, asserting
where every job ended and why. (Warm and cold shutdown, kill_workers, --now, stop-job and a job
naming a foreign function are in test_consumer.py and test_kill.py; bad queue names and over-size
arguments in test_producer.py.)"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest
import redis
from rq import Queue, Worker
from rq.job import Job

from tests.helpers import RedisServer, cli_env, enqueue_fault, fetch, run_cli, status, wait_for
from workqueue import producer
from workqueue.errors import BadInput
from workqueue.jobs import SERIALIZER


@pytest.fixture
def env(redis_url: str) -> dict:
    return cli_env(WORKQUEUE_EXTRA_TASKS="tests.fault_tasks", REDIS_URL=redis_url)


def errors(conn: redis.Redis, job: Job) -> list[str]:
    """The last line of each failed attempt's error, oldest first; the final one is also RQ's result."""
    found = fetch(conn, job)
    attempts = [a["error"].splitlines()[-1] for a in found.meta.get("attempts", [])]
    final = found.latest_result()
    if final is not None and final.exc_string:
        assert attempts and attempts[-1] == final.exc_string.strip().splitlines()[-1]
    return attempts


def ended(conn: redis.Redis, job: Job, timeout: float = 30) -> str:
    wait_for(
        lambda: status(conn, job) in ("finished", "failed", "stopped", "canceled"), timeout, f"job {job.id} to end"
    )
    return status(conn, job)


def run_burst(env: dict, workers: int = 1) -> None:
    result = run_cli("consumer_main.py", "--workers", str(workers), "--burst", env=env)
    assert result.returncode == 0, result.stderr


def test_raise_fails_with_the_error(conn, env) -> None:
    job = enqueue_fault(conn, "raise_error", message="disk full")
    run_burst(env)
    assert status(conn, job) == "failed" and errors(conn, job) == ["RuntimeError: disk full"]


@pytest.mark.slow
def test_retries_back_off_and_keep_every_attempts_error(conn, env, processes) -> None:
    job = enqueue_fault(conn, "raise_with_retries", message="flaky")
    assert fetch(conn, job).retries_left == 2 and len(fetch(conn, job).retry_intervals) == 2
    processes.start("consumer_main.py", "--workers", "1", env=env)
    assert ended(conn, job, 40) == "failed"
    assert errors(conn, job) == ["RuntimeError: flaky"] * 3  # the first run and two retries


def test_retry_intervals_double_with_jitter() -> None:
    call = producer.TaskCall.build("scrape", {"url": "http://example.com/"}, retries=6)
    waits = [call.retry().intervals for _ in range(20)]
    for series in waits:
        assert all(5 * 2**i * 0.5 - 1 <= w <= 5 * 2**i * 1.5 + 1 for i, w in enumerate(series))
    assert len({tuple(w) for w in waits}) > 1  # jitter
    assert producer.TaskCall.build("sleep", {}, retries=0).retry() is None


def test_timeout_fails_the_job(conn, env) -> None:
    job = enqueue_fault(conn, "sleep", seconds=10, _timeout=1, _retries=0)
    started = time.monotonic()
    run_burst(env)
    assert time.monotonic() - started < 8
    assert status(conn, job) == "failed" and "JobTimeoutException" in errors(conn, job)[-1]


def test_a_job_after_one_that_set_its_own_alarm_handler_still_times_out(conn, env) -> None:
    # The same horse runs both (the first succeeds): its timeout's handler, installed once, is put back.
    first = enqueue_fault(conn, "ignore_alarm", seconds=0)
    second = enqueue_fault(conn, "sleep", seconds=10, _timeout=1, _retries=0)
    run_burst(env)
    assert status(conn, first) == "finished"
    assert status(conn, second) == "failed"
    assert errors(conn, second)[-1].endswith("JobTimeoutException: Task exceeded maximum timeout value (1 seconds)")


@pytest.mark.slow
def test_job_ignoring_the_alarm_is_killed_within_seconds_of_its_timeout(conn, env) -> None:
    job = enqueue_fault(conn, "ignore_alarm", seconds=60)  # its task's timeout is 2 s
    started = time.monotonic()
    run_burst(env)
    assert time.monotonic() - started < 2 + 10
    assert status(conn, job) == "failed"
    assert errors(conn, job) == ["JobTimeoutException: job exceeded its 2 s timeout and ignored the alarm; killed"]


@pytest.mark.parametrize(
    "task, params, reason",
    [
        ("exit_process", {"code": 0}, "WorkHorseExited: the work horse exited without recording a result"),
        ("exit_process", {"code": 3}, "waitpid returned 768"),
        ("segfault", {}, "(signal 11)"),
        ("unserializable", {}, "returned a value JSON cannot hold: Object of type set is not JSON serializable"),
    ],
)
def test_jobs_that_crash_their_process_end_failed_with_a_reason(conn, env, task, params, reason) -> None:
    job = enqueue_fault(conn, task, **params)
    run_burst(env)
    assert status(conn, job) == "failed" and reason in errors(conn, job)[-1]


def test_non_serializable_and_oversize_arguments_are_refused_before_enqueueing(conn) -> None:
    with pytest.raises(BadInput, match="seconds: expected a number"):
        producer.TaskCall.build("sleep", {"seconds": object()})
    with pytest.raises(BadInput, match="over the 1,000,000 limit"):
        producer.TaskCall.build("scrape", {"url": "http://x.org/" + "a" * 1_000_000})
    assert conn.keys() == []


def horse_pid(marker: Path) -> int:
    return int(wait_for(lambda: marker.exists() and marker.read_text().split(), 20, "the job to start")[-1])


def worker_pid(conn: redis.Redis) -> int:
    return wait_for(lambda: [w.pid for w in Worker.all(connection=conn)], 20, "a worker")[0]


@pytest.mark.slow
def test_horse_sigkill_fails_the_attempt_and_the_retry_finishes(conn, env, processes, tmp_path) -> None:
    marker = tmp_path / "runs"
    job = enqueue_fault(conn, "count_runs", marker=str(marker), seconds=3)
    processes.start("consumer_main.py", "--workers", "1", env=env)
    os.kill(horse_pid(marker), signal.SIGKILL)
    assert ended(conn, job, 30) == "finished"
    assert len(marker.read_text().split()) == 2
    assert "(signal 9)" in errors(conn, job)[0]


@pytest.mark.parametrize("victims", ["worker", "worker and horse"])
def test_worker_sigkill_is_noticed_within_15_s_and_the_job_runs_again(conn, env, processes, tmp_path, victims) -> None:
    marker = tmp_path / "runs"
    job = enqueue_fault(conn, "count_runs", marker=str(marker), seconds=2)
    consumer = processes.start("consumer_main.py", "--workers", "1", env=env)
    horse = horse_pid(marker)
    worker = worker_pid(conn)
    killed_at = time.monotonic()
    os.kill(worker, signal.SIGKILL)
    if victims == "worker and horse":
        os.kill(horse, signal.SIGKILL)
    wait_for(lambda: status(conn, job) != "started", 20, "the dead worker's job to be handed back")
    assert time.monotonic() - killed_at <= 15
    assert not psutil.pid_exists(horse) or psutil.Process(horse).status() == psutil.STATUS_ZOMBIE
    assert ended(conn, job, 30) == "finished"
    assert len(marker.read_text().split()) == 2
    assert "died (its heartbeat expired)" in fetch(conn, job).meta["interruptions"][0]["reason"]
    assert consumer.poll() is None  # the pool replaced its worker and carried on


def test_worker_death_of_a_job_not_safe_to_rerun_fails_it_with_the_reason(conn, env, processes, tmp_path) -> None:
    marker = tmp_path / "runs"
    job = enqueue_fault(conn, "count_runs_unsafe", marker=str(marker), seconds=30)
    processes.start("consumer_main.py", "--workers", "1", env=env)
    horse_pid(marker)
    os.kill(worker_pid(conn), signal.SIGKILL)
    assert ended(conn, job, 25) == "failed"
    assert (
        "died (its heartbeat expired); not re-run: task count_runs_unsafe is not safe to re-run"
        in errors(conn, job)[-1]
    )
    assert len(marker.read_text().split()) == 1


def test_worker_killed_between_dequeue_and_start_loses_nothing_on_several_queues(conn, env) -> None:
    """A job moved out of its queue by a worker that died before registering it is requeued."""
    from workqueue import recovery

    job = enqueue_fault(conn, "sleep", queue="b", seconds=0.1)
    # What a waiting worker's BLMOVE does before it claims the job (CatalogueWorker._wait_and_claim).
    queue = Queue("b", connection=conn, serializer=SERIALIZER)
    assert conn.lmove(queue.key, queue.intermediate_queue_key) == job.id.encode()
    # ... and the worker dies here. The sweep requeues it on its second sighting.
    assert recovery.sweep(conn)[1] == []
    rescued = recovery.sweep(conn)[1]
    assert [r.job_id for r in rescued] == [job.id] and Queue("b", connection=conn).job_ids == [job.id]
    run_cli("consumer_main.py", "--workers", "1", "--queue", "a", "--queue", "b", "--burst", env=env)
    assert status(conn, job) == "finished"


def aof_server() -> RedisServer:
    server = RedisServer("--appendonly", "yes", "--appendfsync", "everysec")
    server.wait_ready()
    return server


def test_redis_kill_9_and_restart_loses_no_queued_job(tmp_path) -> None:
    server = aof_server()
    try:
        conn = redis.Redis(port=server.port)
        jobs = producer.enqueue(conn, [producer.TaskCall.build("sleep", {"seconds": 1})] * 200, "queue_one").jobs
        time.sleep(1.5)  # appendfsync everysec
        server.restart(signal.SIGKILL)
        q = Queue("queue_one", connection=redis.Redis(port=server.port), serializer=SERIALIZER)
        assert q.job_ids == [job.id for job in jobs]
        assert all(job.get_status().value == "queued" for job in q.jobs)
    finally:
        server.stop()


@pytest.mark.slow
def test_workers_ride_out_a_minute_of_redis_outage_across_a_jobs_end(tmp_path, processes) -> None:
    server = aof_server()
    try:
        env = cli_env(WORKQUEUE_EXTRA_TASKS="tests.fault_tasks", REDIS_URL=server.url)
        conn = redis.Redis(port=server.port)
        marker = tmp_path / "runs"
        job = enqueue_fault(conn, "count_runs", marker=str(marker), seconds=2)
        consumer = processes.start("consumer_main.py", "--workers", "2", env=env)
        horse_pid(marker)
        time.sleep(1.2)  # let the start reach the append-only log
        server.restart(signal.SIGKILL, down_for=60)  # a minute's outage; the job ends during it
        conn = redis.Redis(port=server.port)
        assert ended(conn, job, 40) == "finished"
        assert consumer.poll() is None
        wait_for(lambda: len(Worker.all(connection=conn)) == 2, 20, "both workers to be registered again")
        again = enqueue_fault(conn, "sleep", seconds=0.1)
        assert ended(conn, again, 20) == "finished"
        consumer.send_signal(signal.SIGTERM)
        out, _ = consumer.communicate(timeout=30)
        assert "Redis not answering" in out
    finally:
        processes.stop_all()  # before Redis goes: the workers would wait for it to come back
        server.stop()


def test_producer_facing_a_down_redis_exits_1_having_enqueued_nothing() -> None:
    result = run_cli("producer_main.py", "--task", "sleep", "--count", "5", "--redis-url", "redis://127.0.0.1:1/0")
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "cannot reach Redis at redis://127.0.0.1:1/0" in result.stderr and "nothing was enqueued" in result.stderr
