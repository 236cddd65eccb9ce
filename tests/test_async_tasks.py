"""Catalogue tasks declared ``async def`` run on their horse's event loop (``workqueue.async_tasks``),
each job keeping its timeout, its stop, its progress and its hand-back, with ``--concurrency N`` and
with one job at a time. Real redis-server, real workers; counts and orders only, never timings."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from pathlib import Path

import pytest
import redis
from rq.job import Job

from tests import coroutine_tasks
from tests.helpers import (
    Processes,
    child_pids,
    cli_env,
    enqueue_fault,
    fetch,
    run_cli,
    status,
    wait_for,
    workers,
)
from workqueue import async_tasks, producer
from workqueue.jobs import SERIALIZER, CatalogueJob

TASKS = {task.name: task for task in coroutine_tasks.TASKS}


def start(processes: Processes, conn: redis.Redis, redis_url: str, concurrency: int):
    """One worker running up to ``concurrency`` jobs at once, on queue_one, once it registered."""
    consumer = processes.start(
        "consumer_main.py", "--workers", "1", "--queue", "queue_one", "--concurrency", str(concurrency),
        env=cli_env(WORKQUEUE_EXTRA_TASKS="tests.fault_tasks,tests.coroutine_tasks", REDIS_URL=redis_url),
    )  # fmt: skip
    wait_for(lambda: [w for w in workers(conn) if w.pid in child_pids(consumer)], 20, "the worker")
    return consumer


def enqueue(
    conn: redis.Redis, name: str, jobs: int = 1, timeout: int | None = None, retries: int | None = None, **params
) -> list[Job]:
    """``jobs`` jobs of a task of tests/coroutine_tasks.py (``timeout``, ``retries``: the jobs' own)."""
    task = TASKS[name]
    call = producer.TaskCall(task, task.validate(params), timeout=timeout, retries=retries)
    return producer.enqueue(conn, [call] * jobs, "queue_one").jobs


def result(conn: redis.Redis, job: Job):
    return CatalogueJob.fetch(job.id, connection=conn, serializer=SERIALIZER).return_value()


def error(conn: redis.Redis, job: Job) -> str:
    return fetch(conn, job).latest_result().exc_string


def ended(conn: redis.Redis, jobs: list[Job]) -> bool:
    return all(status(conn, job) in ("finished", "failed", "stopped") for job in jobs)


def interruptions(conn: redis.Redis, job: Job) -> list:
    return fetch(conn, job).meta.get("interruptions", [])


def test_jobs_of_an_async_task_run_together_on_their_horses_one_loop(conn, processes, redis_url) -> None:
    start(processes, conn, redis_url, 4)
    jobs = enqueue(conn, "together", 4, count=4)
    wait_for(lambda: ended(conn, jobs), 60, "the four jobs to end")
    results = [result(conn, job) for job in jobs]
    assert [status(conn, job) for job in jobs] == ["finished"] * 4
    assert {r["most"] for r in results} == {4}  # all four at once
    assert {r["thread"] for r in results} == {"async-tasks"}  # on the loop's thread, not their slots'
    assert len({(r["horse"], r["loop"]) for r in results}) == 1  # one horse, one loop
    assert all(fetch(conn, job).meta["progress"]["message"] == "together" for job in jobs)  # reported inside


def test_an_async_task_runs_with_one_job_at_a_time(conn, processes, redis_url) -> None:
    start(processes, conn, redis_url, 1)
    (napping,) = enqueue(conn, "nap", seconds=0.3)
    (wrapped,) = enqueue(conn, "wrapped", seconds=0.2)  # a plain function returning a coroutine
    (failing,) = enqueue(conn, "fails", message="raised in the coroutine")
    wait_for(lambda: ended(conn, [napping, wrapped, failing]), 60, "the three jobs to end")
    assert status(conn, napping) == "finished" and result(conn, napping) == {"slept": 0.3}
    assert status(conn, wrapped) == "finished" and result(conn, wrapped) == {"slept": 0.2}
    assert status(conn, failing) == "failed"
    assert "ValueError: raised in the coroutine" in error(conn, failing)


@pytest.mark.parametrize("concurrency", [1, 3])
def test_an_async_jobs_timeout_cancels_its_coroutine_and_fails_only_it(
    conn, processes, redis_url, tmp_path: Path, concurrency: int
) -> None:
    start(processes, conn, redis_url, concurrency)
    marker = tmp_path / "cancelled"
    (late,) = enqueue(conn, "nap", timeout=2, seconds=60, marker=str(marker))
    neighbours = enqueue(conn, "nap", 2, seconds=3)
    wait_for(lambda: ended(conn, [late, *neighbours]), 90, "the three jobs to end")
    assert status(conn, late) == "failed"
    assert "JobTimeoutException" in error(conn, late)
    assert marker.read_text().splitlines()[1:] == ["cancelled"]  # the coroutine saw it, once
    assert [status(conn, job) for job in neighbours] == ["finished"] * 2
    assert not any(interruptions(conn, job) for job in [late, *neighbours])  # no horse killed


def test_kill_job_cancels_one_of_several_async_jobs_and_the_others_finish(
    conn, processes, redis_url, tmp_path: Path
) -> None:
    start(processes, conn, redis_url, 3)
    markers = [tmp_path / f"job{i}" for i in range(3)]
    jobs = [enqueue(conn, "nap", seconds=6, marker=str(m))[0] for m in markers]
    wait_for(lambda: all(status(conn, job) == "started" for job in jobs), 30, "the three jobs to start")
    stopped = run_cli("kill_thread/kill_job.py", jobs[1].id, env=cli_env(REDIS_URL=redis_url))
    assert stopped.returncode == 0, stopped.stderr
    assert status(conn, jobs[1]) == "stopped"
    wait_for(lambda: "cancelled" in markers[1].read_text(), 10, "the stopped job's coroutine to be cancelled")
    wait_for(lambda: ended(conn, jobs), 30, "the neighbours to finish")
    assert [status(conn, job) for job in (jobs[0], jobs[2])] == ["finished", "finished"]
    assert ["cancelled" in m.read_text() for m in markers] == [False, True, False]
    assert not any(interruptions(conn, job) for job in jobs)


def test_an_async_job_reports_progress_while_it_runs(conn, processes, redis_url) -> None:
    start(processes, conn, redis_url, 2)
    (job,) = enqueue(conn, "nap", seconds=4)

    def reported() -> bool:
        found = fetch(conn, job)
        return found.get_status().value == "started" and found.meta.get("progress", {}).get("done", 0) >= 1

    wait_for(reported, 30, "the running job to report progress")
    assert fetch(conn, job).meta["progress"]["message"] == "napping"


def test_an_async_job_ignoring_its_cancellation_has_its_horse_killed_and_its_neighbours_handed_back(
    conn, processes, redis_url, tmp_path: Path
) -> None:
    start(processes, conn, redis_url, 3)
    (stubborn,) = enqueue(conn, "deaf", seconds=60)  # a 2 s timeout, every cancellation ignored
    markers = [tmp_path / f"run{i}" for i in range(2)]
    neighbours = [enqueue_fault(conn, "count_runs", marker=str(m), seconds=8) for m in markers]
    wait_for(lambda: status(conn, stubborn) == "failed", 60, "the stubborn job to be failed")
    assert "ignored the alarm; killed" in error(conn, stubborn)
    wait_for(lambda: ended(conn, neighbours), 90, "the neighbours to finish")
    assert [len(m.read_text().splitlines()) for m in markers] == [2, 2]  # killed once, then run again
    assert all(len(interruptions(conn, job)) == 1 for job in neighbours)


def test_a_horse_killed_while_running_async_jobs_hands_them_back_and_each_finishes(
    conn, processes, redis_url, tmp_path: Path
) -> None:
    start(processes, conn, redis_url, 2)
    markers = [tmp_path / f"job{i}" for i in range(2)]
    jobs = [enqueue(conn, "nap", retries=1, seconds=4, marker=str(m))[0] for m in markers]  # a crash uses a retry
    wait_for(lambda: all(m.exists() for m in markers), 30, "the two jobs to start")
    horses = {m.read_text().split()[1] for m in markers}
    assert len(horses) == 1  # one horse runs both
    os.kill(int(horses.pop()), signal.SIGKILL)
    wait_for(lambda: ended(conn, jobs), 60, "the two jobs to finish")
    assert [status(conn, job) for job in jobs] == ["finished", "finished"]
    assert [len(m.read_text().splitlines()) for m in markers] == [2, 2]  # each started twice, never cancelled
    assert all(len(interruptions(conn, job)) == 1 for job in jobs)


# -- the loop itself, in this process -------------------------------------------------------------


def test_run_returns_the_coroutines_result_and_raises_its_exception() -> None:
    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    async def broken() -> None:
        raise KeyError("inside")

    assert async_tasks.run(answer()) == 42
    with pytest.raises(KeyError, match="inside"):
        async_tasks.run(broken())


def test_the_coroutine_knows_its_job_and_the_loops_thread_knows_none(conn) -> None:
    job = Job("a-job", connection=conn)

    async def whose() -> object:
        return async_tasks.current_job()

    assert async_tasks.run(whose(), job) is job
    assert async_tasks.run(whose()) is None
    assert async_tasks.current_job() is None


def test_an_exception_raised_in_the_waiting_thread_cancels_the_coroutine_first() -> None:
    assert threading.current_thread() is threading.main_thread()  # where a signal's handler runs
    events: list[str] = []

    async def long() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            events.append("cancelled")
            raise

    class Alarm(Exception):
        pass

    def ring(_signum, _frame) -> None:
        raise Alarm("the job's timeout")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, 0.3)
    try:
        with pytest.raises(Alarm):
            async_tasks.run(long())
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert events == ["cancelled"]  # before run() raised
