"""Claiming ahead: a worker running one job at a time takes several short jobs of a deep queue per
round trip, holds them for a bounded time behind a long one, gives back those it has not run when it
stops, and stops one a stop-job command names before it runs. Real redis-server, real workers;
counts and orders only, never timings."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import redis
from rq import Queue
from rq.job import Job

from tests.helpers import FAULTS, Processes, child_pids, cli_env, fetch, run_cli, status, wait_for, workers
from workqueue import producer
from workqueue.jobs import SERIALIZER, CatalogueJob
from workqueue.settings import AHEAD_MIN_DEPTH
from workqueue.worker import job_steps
from workqueue.worker.catalogue_worker import CatalogueWorker

QUEUE = "queue_one"


def enqueue_runs(conn: redis.Redis, folder: Path, seconds: list[float]) -> list[Job]:
    """One ``count_runs`` job per entry of ``seconds`` (how long it sleeps), in that order, each
    with a marker file of its own that gets a line per run."""
    task = FAULTS["count_runs"]
    calls = [
        producer.TaskCall(task, task.validate({"marker": str(folder / f"job-{i}"), "seconds": s}))
        for i, s in enumerate(seconds)
    ]
    return producer.enqueue(conn, calls, QUEUE).jobs


def runs(folder: Path, index: int) -> int:
    marker = folder / f"job-{index}"
    return len(marker.read_text().splitlines()) if marker.exists() else 0


def start(processes: Processes, redis_url: str, *extra: str, **env: str):
    return processes.start(
        "consumer_main.py", "--workers", "1", "--queue", QUEUE, *extra,
        env=cli_env(WORKQUEUE_EXTRA_TASKS="tests.fault_tasks", REDIS_URL=redis_url, **env),
    )  # fmt: skip


def held_behind(conn: redis.Redis, jobs: list[Job], long: int) -> list[int]:
    """Indexes of the jobs after the long one that are started while it runs: claimed ahead."""
    return [i for i in range(long + 1, len(jobs)) if status(conn, jobs[i]) == "started"]


def evalsha_calls(conn: redis.Redis) -> int:
    return int(conn.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


def burst_drain(
    conn: redis.Redis, processes: Processes, redis_url: str, folder: Path, **env: str
) -> tuple[list[Job], float]:
    """300 short jobs drained by a one-worker ``--burst`` consumer with ``env``: each finished, each run
    once; the jobs and the EVALSHA calls per job (a claim and an end each, one per job before claiming ahead)."""
    jobs = enqueue_runs(conn, folder, [0.0] * 300)
    before = evalsha_calls(conn)
    consumer = start(processes, redis_url, "--burst", **env)
    consumer.communicate(timeout=120)
    assert consumer.returncode == 0
    per_job = (evalsha_calls(conn) - before) / len(jobs)
    assert all(status(conn, job) == "finished" for job in jobs)
    assert [runs(folder, i) for i in range(len(jobs))] == [1] * len(jobs)
    return jobs, per_job


#: A queue of short jobs with a long one near its head: the worker's second claim (after one short
#: job) takes the long one and the jobs after it, which then wait behind it.
LONG_AT = 3
SHAPE = [0.0] * LONG_AT + [6.0] + [0.0] * 30


@pytest.mark.parametrize("ahead", ["4", "0"])
def test_a_deep_queue_of_short_jobs_is_claimed_several_per_round_trip(
    conn, processes, redis_url, tmp_path, ahead
) -> None:
    jobs, per_job = burst_drain(conn, processes, redis_url, tmp_path, WORKQUEUE_CLAIM_AHEAD=ahead)
    assert not any(fetch(conn, job).meta.get("interruptions") for job in jobs)
    if ahead == "0":
        assert per_job >= 2.0
    else:
        assert per_job < 1.5


def test_jobs_claimed_ahead_go_back_to_the_queue_when_the_job_before_them_runs_long(
    conn, processes, redis_url, tmp_path
) -> None:
    jobs = enqueue_runs(conn, tmp_path, SHAPE)
    retries = fetch(conn, jobs[-1]).retries_left
    start(processes, redis_url, WORKQUEUE_CLAIM_AHEAD="20", WORKQUEUE_CLAIM_AHEAD_HOLD="0.5")
    # running (its marker written), not only started: a job claimed ahead is "started" already
    wait_for(lambda: runs(tmp_path, LONG_AT) == 1, 30, "the long job to run")
    after = list(range(LONG_AT + 1, len(jobs)))
    # given back within the hold, while the long job still runs: queued again, in order, at the front
    wait_for(lambda: all(status(conn, jobs[i]) == "queued" for i in after), 4, "the jobs held ahead to be given back")
    assert status(conn, jobs[LONG_AT]) == "started"
    assert [j.decode() for j in conn.lrange(f"rq:queue:{QUEUE}", 0, -1)] == [jobs[i].id for i in after]
    assert [runs(tmp_path, i) for i in after] == [0] * len(after)
    assert [fetch(conn, jobs[i]).retries_left for i in after] == [retries] * len(after)  # no retry used
    wait_for(lambda: all(status(conn, job) == "finished" for job in jobs), 60, "every job to finish")
    assert [runs(tmp_path, i) for i in range(len(jobs))] == [1] * len(jobs)
    assert not any(fetch(conn, job).meta.get("interruptions") for job in jobs)  # given back as they were


def test_a_slower_short_job_claims_fewer_ahead(conn, processes, redis_url, tmp_path) -> None:
    """As many as AHEAD_BUDGET seconds hold at the last job's pace: after a job of 40 ms or more
    (0.25 s / 40 ms: 6 at most), never the 20 allowed, which a no-op job's pace would claim. (The
    first job's time may include the horse's start: the long job comes after the second.)"""
    long = 3
    jobs = enqueue_runs(conn, tmp_path, [0.04] * long + [10.0] + [0.0] * 30)
    start(processes, redis_url, WORKQUEUE_CLAIM_AHEAD="20", WORKQUEUE_CLAIM_AHEAD_HOLD="60")
    # one claim took the long job and the jobs claimed ahead with it, which stay held while it runs
    wait_for(lambda: runs(tmp_path, long) == 1, 30, "the long job to run")
    assert len(held_behind(conn, jobs, long)) <= 6


@pytest.mark.parametrize("how", ["warm", "cold"])
def test_a_stopped_worker_gives_back_the_jobs_it_claimed_ahead(conn, processes, redis_url, tmp_path, how) -> None:
    jobs = enqueue_runs(conn, tmp_path, SHAPE)
    consumer = start(processes, redis_url, WORKQUEUE_CLAIM_AHEAD="20", WORKQUEUE_CLAIM_AHEAD_HOLD="60")
    # running (its marker written), not only started: a job claimed ahead is "started" already
    wait_for(lambda: runs(tmp_path, LONG_AT) == 1, 30, "the long job to run")
    held = wait_for(lambda: held_behind(conn, jobs, LONG_AT), 10, "jobs claimed ahead")
    assert isinstance(held, list) and len(held) > 1
    consumer.send_signal(signal.SIGINT)
    if how == "cold":
        time.sleep(0.3)  # two signals sent at once are delivered as one
        consumer.send_signal(signal.SIGTERM)
    consumer.communicate(timeout=60)
    # warm: the long job ran to its end; cold: handed back (an interruption noted). Those held: as they were.
    assert status(conn, jobs[LONG_AT]) == ("finished" if how == "warm" else "queued")
    for i in held:
        found = fetch(conn, jobs[i])
        assert found.get_status() == "queued"
        assert not found.meta.get("interruptions")
        assert runs(tmp_path, i) == 0
    queued = [j.decode() for j in conn.lrange(f"rq:queue:{QUEUE}", 0, -1)]
    expected_head = ([jobs[LONG_AT].id] if how == "cold" else []) + [jobs[i].id for i in held]
    order = {job.id: i for i, job in enumerate(jobs)}
    assert queued[: len(expected_head)] == expected_head, ([order[q] for q in queued], held)
    again = start(processes, redis_url, "--burst")
    again.communicate(timeout=120)
    assert all(status(conn, job) == "finished" for job in jobs)
    assert [runs(tmp_path, i) for i in range(len(jobs)) if i != LONG_AT] == [1] * (len(jobs) - 1)


def test_a_stop_job_command_for_a_job_claimed_ahead_stops_it_before_it_runs(
    conn, processes, redis_url, tmp_path
) -> None:
    jobs = enqueue_runs(conn, tmp_path, SHAPE)
    start(processes, redis_url, WORKQUEUE_CLAIM_AHEAD="20", WORKQUEUE_CLAIM_AHEAD_HOLD="60")
    # running (its marker written), not only started: a job claimed ahead is "started" already
    wait_for(lambda: runs(tmp_path, LONG_AT) == 1, 30, "the long job to run")
    held = wait_for(lambda: held_behind(conn, jobs, LONG_AT), 10, "jobs claimed ahead")
    assert isinstance(held, list)
    target = held[-1]
    result = run_cli("kill_thread/kill_job.py", jobs[target].id, env=cli_env(REDIS_URL=redis_url))
    assert result.returncode == 0, result.stderr
    assert "stopped" in result.stdout
    assert status(conn, jobs[target]) == "stopped"
    assert status(conn, jobs[LONG_AT]) == "started"  # the running job runs on
    wait_for(lambda: all(status(conn, job) == "finished" for i, job in enumerate(jobs) if i != target), 60, "the rest")
    assert runs(tmp_path, target) == 0
    assert [runs(tmp_path, i) for i in range(len(jobs)) if i != target] == [1] * (len(jobs) - 1)


def test_a_worker_killed_with_jobs_claimed_ahead_loses_none(conn, processes, redis_url, tmp_path) -> None:
    jobs = enqueue_runs(conn, tmp_path, SHAPE)
    consumer = start(processes, redis_url, WORKQUEUE_CLAIM_AHEAD="20", WORKQUEUE_CLAIM_AHEAD_HOLD="60")
    # running (its marker written), not only started: a job claimed ahead is "started" already
    wait_for(lambda: runs(tmp_path, LONG_AT) == 1, 30, "the long job to run")
    held = wait_for(lambda: held_behind(conn, jobs, LONG_AT), 10, "jobs claimed ahead")
    assert isinstance(held, list)
    [worker] = [w for w in workers(conn) if w.pid in child_pids(consumer)]
    os.kill(worker.pid, signal.SIGKILL)  # the pool sweeps: its jobs are handed back, a new worker runs them
    wait_for(lambda: all(status(conn, job) == "finished" for job in jobs), 90, "every job to finish")
    assert all(runs(tmp_path, i) == 1 for i in held)  # claimed ahead, never run: run once, after the hand-back


def test_a_claim_takes_jobs_ahead_only_from_a_deep_queue_using_no_pause_limit_or_level(conn, tmp_path) -> None:
    worker = CatalogueWorker([QUEUE], connection=conn, name="ahead-worker")
    worker.register_birth()
    queue = Queue(QUEUE, connection=conn, serializer=SERIALIZER, job_class=CatalogueJob)
    enqueue_runs(conn, tmp_path, [0.0] * (AHEAD_MIN_DEPTH + 3))
    # 13 queued: the first, then two more while more than AHEAD_MIN_DEPTH remain
    assert len(job_steps.claim_many(worker, [queue], 8, ahead_depth=AHEAD_MIN_DEPTH)) == 3
    conn.delete(f"rq:queue:{QUEUE}")
    enqueue_runs(conn, tmp_path, [0.0] * 30)
    conn.sadd("workqueue:paused", "another_queue")  # a pause anywhere: no claim ahead
    assert len(job_steps.claim_many(worker, [queue], 8, ahead_depth=AHEAD_MIN_DEPTH)) == 1
    conn.delete("workqueue:paused")
    assert len(job_steps.claim_many(worker, [queue], 8, ahead_depth=AHEAD_MIN_DEPTH)) == 8
    assert len(job_steps.claim_many(worker, [queue], 8)) == 8  # filling slots: no depth asked
