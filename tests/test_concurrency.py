"""``consumer_main.py --concurrency N``: a worker's horse runs up to N jobs at once, in threads, each
keeping its timeout, its stop, its progress and its hand-back. Real redis-server, real workers;
counts and orders only, never timings."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import redis
from rq import Queue
from rq.job import Job

from tests import concurrency_tasks
from tests.helpers import (
    Processes,
    child_pids,
    cli_env,
    client_for,
    enqueue_fault,
    enqueue_jobs,
    fetch,
    run_cli,
    status,
    wait_for,
    workers,
)
from workqueue import batches, limits, producer
from workqueue.jobs import SERIALIZER, CatalogueJob
from workqueue.worker import job_steps
from workqueue.worker.catalogue_worker import CatalogueWorker


def start(processes: Processes, conn: redis.Redis, redis_url: str, concurrency: int, *extra: str):
    """One worker running up to ``concurrency`` jobs at once, on queue_one, once it registered."""
    consumer = processes.start(
        "consumer_main.py", "--workers", "1", "--queue", "queue_one", "--concurrency", str(concurrency), *extra,
        env=cli_env(WORKQUEUE_EXTRA_TASKS="tests.fault_tasks,tests.concurrency_tasks", REDIS_URL=redis_url),
    )  # fmt: skip
    if "--burst" not in extra:
        wait_for(lambda: [w for w in workers(conn) if w.pid in child_pids(consumer)], 20, "the worker")
    return consumer


def most_at_once(conn: redis.Redis, jobs: list[Job]) -> int:
    """The most jobs whose [started_at, ended_at] intervals overlap at one instant."""
    edges = []
    for job in jobs:
        found = fetch(conn, job)
        edges += [(found.started_at, 1), (found.ended_at, -1)]
    running = peak = 0
    for _at, step in sorted(edges, key=lambda edge: (edge[0], edge[1])):  # an end before a start at the same instant
        running += step
        peak = max(peak, running)
    return peak


def all_in(conn: redis.Redis, jobs: list[Job], *states: str) -> bool:
    return all(status(conn, job) in states for job in jobs)


def interruptions(conn: redis.Redis, job: Job) -> list:
    return fetch(conn, job).meta.get("interruptions", [])


def test_five_slots_run_ten_sleeps_five_at_a_time_and_never_more(conn, processes, redis_url) -> None:
    jobs = enqueue_jobs(conn, "sleep", count=10, seconds=1)
    consumer = start(processes, conn, redis_url, 5, "--burst")
    consumer.communicate(timeout=90)
    assert consumer.returncode == 0
    assert all_in(conn, jobs, "finished")
    assert 3 <= most_at_once(conn, jobs) <= 5  # (one at a time: 1)


def test_a_timeout_fires_in_its_thread_and_fails_only_its_job(conn, processes, redis_url) -> None:
    start(processes, conn, redis_url, 3)
    late = enqueue_fault(conn, "sleep", seconds=30, _timeout=2, _retries=0)
    neighbours = enqueue_jobs(conn, "sleep", count=2, seconds=5)
    wait_for(lambda: all_in(conn, [late, *neighbours], "failed", "finished"), 60, "the three jobs to end")
    assert status(conn, late) == "failed"
    assert "JobTimeoutException" in fetch(conn, late).latest_result().exc_string
    assert all_in(conn, neighbours, "finished")
    assert not any(interruptions(conn, job) for job in neighbours)  # they ran once, their horse never killed


def test_a_job_ignoring_its_timeout_has_its_horse_killed_and_its_neighbours_handed_back(
    conn, processes, redis_url, tmp_path: Path
) -> None:
    start(processes, conn, redis_url, 3)
    call = producer.TaskCall(concurrency_tasks.TASKS[0], {"seconds": 60.0})
    stubborn = producer.enqueue(conn, [call], "queue_one").jobs[0]  # one blocking call: the exception waits for it
    markers = [tmp_path / f"run{i}" for i in range(2)]
    neighbours = [enqueue_fault(conn, "count_runs", marker=str(m), seconds=15) for m in markers]
    wait_for(lambda: status(conn, stubborn) == "failed", 60, "the stubborn job to be failed")
    assert "ignored the alarm; killed" in fetch(conn, stubborn).latest_result().exc_string
    wait_for(lambda: all_in(conn, neighbours, "finished"), 90, "the neighbours to finish")
    assert [len(m.read_text().splitlines()) for m in markers] == [2, 2]  # killed once, then run again
    assert all(len(interruptions(conn, job)) == 1 for job in neighbours)


def test_kill_job_stops_one_of_several_running_jobs_and_the_others_finish(conn, processes, redis_url) -> None:
    start(processes, conn, redis_url, 3)
    jobs = enqueue_jobs(conn, "sleep", count=3, seconds=6)
    wait_for(lambda: all_in(conn, jobs, "started"), 30, "the three jobs to start")
    result = run_cli("kill_thread/kill_job.py", jobs[1].id, env=cli_env(REDIS_URL=redis_url))
    assert result.returncode == 0, result.stderr
    assert status(conn, jobs[1]) == "stopped"
    assert all_in(conn, [jobs[0], jobs[2]], "started")  # the neighbours run on
    wait_for(lambda: all_in(conn, [jobs[0], jobs[2]], "finished"), 30, "the neighbours to finish")
    assert not any(interruptions(conn, job) for job in jobs)


def test_a_stopped_job_is_counted_in_its_batch_as_with_one_job_at_a_time(conn, processes, redis_url) -> None:
    start(processes, conn, redis_url, 3)
    submission = producer.enqueue(conn, [producer.TaskCall.build("sleep", {"seconds": 4})] * 3, "queue_one")
    jobs = submission.jobs
    wait_for(lambda: all_in(conn, jobs, "started"), 30, "the three jobs to start")
    assert run_cli("kill_thread/kill_job.py", jobs[0].id, env=cli_env(REDIS_URL=redis_url)).returncode == 0
    wait_for(lambda: batches.summary(conn, submission.batch_id).done, 30, "the batch to end")
    summary = batches.summary(conn, submission.batch_id)
    assert (summary.finished, summary.failed) == (2, 1)
    assert status(conn, jobs[0]) == "stopped"


def test_a_horse_killed_with_three_jobs_hands_all_three_back_and_each_finishes_once(
    conn, processes, redis_url, tmp_path: Path
) -> None:
    start(processes, conn, redis_url, 3)
    markers = [tmp_path / f"run{i}" for i in range(3)]
    jobs = [enqueue_fault(conn, "count_runs", marker=str(m), seconds=4) for m in markers]
    wait_for(lambda: all(m.exists() for m in markers), 30, "the three jobs to run")
    horses = {m.read_text().split()[0] for m in markers}
    assert len(horses) == 1  # one horse runs the three
    os.kill(int(horses.pop()), signal.SIGKILL)
    wait_for(lambda: all_in(conn, jobs, "finished"), 60, "the three jobs to finish")
    assert [len(m.read_text().splitlines()) for m in markers] == [2, 2, 2]  # each handed back once, rerun once
    assert all(len(interruptions(conn, job)) == 1 for job in jobs)
    results = [CatalogueJob.fetch(job.id, connection=conn, serializer=SERIALIZER).return_value() for job in jobs]
    assert results == [2, 2, 2]


def test_a_warm_stop_lets_every_running_job_finish_and_starts_no_more(conn, processes, redis_url) -> None:
    consumer = start(processes, conn, redis_url, 3)
    jobs = enqueue_jobs(conn, "sleep", count=5, seconds=3)
    wait_for(lambda: sum(status(conn, job) == "started" for job in jobs) == 3, 30, "three jobs to start")
    running = [job for job in jobs if status(conn, job) == "started"]
    consumer.send_signal(signal.SIGINT)
    consumer.communicate(timeout=60)
    assert consumer.returncode == 0
    assert all_in(conn, running, "finished")
    assert sum(status(conn, job) == "queued" for job in jobs) == 2
    assert not any(interruptions(conn, job) for job in running)


def test_a_cold_stop_hands_every_running_job_back(conn, processes, redis_url) -> None:
    consumer = start(processes, conn, redis_url, 3)
    jobs = enqueue_jobs(conn, "sleep", count=3, seconds=30)
    wait_for(lambda: all_in(conn, jobs, "started"), 30, "the three jobs to start")
    consumer.send_signal(signal.SIGINT)
    time.sleep(0.3)  # two signals sent at once are delivered as one
    consumer.send_signal(signal.SIGTERM)
    out, err = consumer.communicate(timeout=60)
    assert all_in(conn, jobs, "queued"), (out, err, [status(conn, job) for job in jobs])
    assert all(len(interruptions(conn, job)) == 1 for job in jobs)


def test_two_concurrent_jobs_store_their_own_progress(conn, processes, redis_url) -> None:
    start(processes, conn, redis_url, 2)
    jobs = enqueue_jobs(conn, "sleep", count=2, seconds=8)

    def reported() -> bool:
        found = [fetch(conn, job) for job in jobs]
        return all(j.get_status().value == "started" and j.meta.get("progress", {}).get("done", 0) >= 1 for j in found)

    wait_for(reported, 30, "both running jobs to report progress")
    assert all(fetch(conn, job).meta["progress"]["message"] == "sleeping" for job in jobs)


def test_the_worker_hash_and_the_dashboard_show_its_slots_in_use(conn, processes, redis_url) -> None:
    consumer = start(processes, conn, redis_url, 4)
    jobs = enqueue_jobs(conn, "sleep", count=2, seconds=8)
    wait_for(lambda: all_in(conn, jobs, "started"), 30, "the two jobs to start")
    (worker,) = [w for w in workers(conn) if w.pid in child_pids(consumer)]
    wait_for(lambda: conn.hget(worker.key, "slots") == b"2/4", 15, "the slots in the worker's hash")
    rows = client_for(redis_url).get("/api/live").json["workers"]
    assert [row["slots"] for row in rows if row["name"] == worker.name] == ["2/4"]  # the dashboard's worker list
    wait_for(lambda: "1 busy (2/4 jobs at once)" in consumer.output()[0], 15, "the slots in the status line")


def test_bad_concurrency_values_exit_2_with_one_line(redis_url) -> None:
    for value in ("0", "51", "many", "-3"):
        result = run_cli("consumer_main.py", "--workers", "1", "--concurrency", value, env=cli_env(REDIS_URL=redis_url))
        assert result.returncode == 2, (value, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "--concurrency" in result.stderr
    help_text = run_cli("consumer_main.py", "--help").stdout
    assert "--concurrency" in help_text and "(1 to 50)" in help_text


def test_one_claim_starts_several_jobs_each_with_its_own_execution(conn) -> None:
    jobs = enqueue_jobs(conn, "sleep", count=5, seconds=1)
    worker = CatalogueWorker(["queue_one"], connection=conn, name="claimer")
    worker.register_birth()
    queue = Queue("queue_one", connection=conn, serializer=SERIALIZER)
    claimed = job_steps.claim_many(worker, [queue], 3)
    assert [c.job.id for c in claimed] == [job.id for job in jobs[:3]]  # in queue order
    executions = {c.execution.id for c in claimed}
    assert len(executions) == 3
    started = {member.decode() for member in conn.zrange(queue.started_job_registry.key, 0, -1)}
    assert started == {f"{c.job.id}:{c.execution.id}" for c in claimed}
    assert all_in(conn, jobs[:3], "started") and all_in(conn, jobs[3:], "queued")
    assert len(job_steps.claim_many(worker, [queue], 5)) == 2  # what is left
    assert job_steps.claim_many(worker, [queue], 5) == []


def test_a_job_enqueued_while_a_slot_is_free_runs_beside_the_running_one(conn, processes, redis_url) -> None:
    start(processes, conn, redis_url, 2)
    (long,) = enqueue_jobs(conn, "sleep", seconds=20)
    wait_for(lambda: status(conn, long) == "started", 30, "the long job to start")
    for _ in range(3):  # the worker waits for jobs (a BLMOVE) while its other slot runs the long one
        (short,) = enqueue_jobs(conn, "sleep", seconds=0.1)
        wait_for(lambda: status(conn, short) == "finished", 30, "the short job to finish")  # noqa: B023
    assert status(conn, long) == "started"


def test_a_horse_runs_its_jobs_in_as_many_threads_as_slots_and_its_timeouts_in_one(conn, processes, redis_url) -> None:
    call = producer.TaskCall(concurrency_tasks.TASKS[1], {"seconds": 0.2})
    jobs = producer.enqueue(conn, [call] * 20, "queue_one").jobs
    consumer = start(processes, conn, redis_url, 4, "--burst")
    consumer.communicate(timeout=90)
    assert consumer.returncode == 0
    assert all_in(conn, jobs, "finished")
    results = [CatalogueJob.fetch(job.id, connection=conn, serializer=SERIALIZER).return_value() for job in jobs]
    assert sum(result["jobs_run"] == 1 for result in results) <= 4  # 20 jobs, no more than 4 threads
    assert 2 <= most_at_once(conn, jobs) <= 4
    for result in results:  # never a thread per job, nor a timer thread per job
        assert len([name for name in result["threads"] if name.startswith("job ")]) <= 4, result["threads"]
        assert len(result["threads"]) <= 4 + 4, result["threads"]  # main, group commit, deadlines, one spare


def test_a_job_paced_once_is_not_paced_again_when_the_job_beside_it_is(conn, processes, redis_url, tmp_path) -> None:
    # Two sends a minute on the key: the two jobs' first requests fill the window; a second request
    # taken for a new job's first would wait the minute out.
    limits.set_rule(conn, limits.make_rule("paced:key", "2/m"))
    call = producer.TaskCall(concurrency_tasks.TASKS[2], {"marker": str(tmp_path / "marks")}, limit_key="paced:key")
    jobs = producer.enqueue(conn, [call] * 2, "queue_one").jobs
    consumer = start(processes, conn, redis_url, 2, "--burst")
    consumer.communicate(timeout=120)
    assert all_in(conn, jobs, "finished")
    results = [CatalogueJob.fetch(job.id, connection=conn, serializer=SERIALIZER).return_value() for job in jobs]
    assert all(result["second"] < 5 for result in results), results
