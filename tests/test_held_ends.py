"""Ends handed over: a worker running one job at a time writes the ends its horse hands it, several in
one request (``worker.held_ends``); those it holds when it dies are handed back and run again, those it
holds when it stops or goes idle are written. Real redis-server, real workers; counts and orders only."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest
from rq import Worker

from tests.helpers import cli_env, run_cli, status, wait_for
from tests.test_claim_ahead import QUEUE, burst_drain, enqueue_runs, runs, start

#: Short jobs, one long enough to be running while the test looks, then enough short ones for a deep
#: queue: a worker claiming ahead, once a job took it under AHEAD_SHORT, claims the next five at once,
#: so the long job comes with short jobs before it, whose ends are then held while it runs.
LONG_AT = 5
SHAPE = [0.0] * LONG_AT + [8.0] + [0.0] * 20


def holding_ends(conn, processes, redis_url, tmp_path):  # type: ignore[no-untyped-def]
    """SHAPE's jobs on a one-worker consumer that holds ends for 60 s, once its long job runs: the
    jobs, the consumer, and the jobs whose ends it holds (:func:`held_while_the_long_job_runs`)."""
    jobs = enqueue_runs(conn, tmp_path, SHAPE)
    consumer = start(processes, redis_url, WORKQUEUE_END_HOLD="60")
    return jobs, consumer, held_while_the_long_job_runs(conn, tmp_path, jobs)


def held_while_the_long_job_runs(conn, tmp_path, jobs) -> list[int]:
    """Wait for the long job to run; the jobs before it all ran, and those whose ends are held
    (still "started"), which are answered: at least one (the one right before the long job)."""
    wait_for(lambda: runs(tmp_path, LONG_AT) == 1, 30, "the long job to run")
    assert [runs(tmp_path, i) for i in range(LONG_AT)] == [1] * LONG_AT
    held = [i for i in range(LONG_AT) if status(conn, jobs[i]) == "started"]
    assert held and held[-1] == LONG_AT - 1, [status(conn, jobs[i]) for i in range(LONG_AT)]
    assert all(status(conn, jobs[i]) == "finished" for i in range(LONG_AT) if i not in held)
    return held


@pytest.mark.parametrize("hold", ["0.005", "0"])
def test_a_one_job_worker_writes_the_ends_of_several_jobs_in_one_request(
    conn, processes, redis_url, tmp_path, hold
) -> None:
    _, per_job = burst_drain(conn, processes, redis_url, tmp_path, WORKQUEUE_END_HOLD=hold)  # claims and ends
    if hold == "0":  # each horse writes its own end
        assert per_job >= 1.0
    else:
        assert per_job < 0.8


def test_a_worker_killed_holding_ends_has_those_jobs_handed_back_and_run_again(
    conn, processes, redis_url, tmp_path
) -> None:
    jobs, consumer, held = holding_ends(conn, processes, redis_url, tmp_path)
    worker = next(w for w in Worker.all(connection=conn) if w.get_state() == "busy")
    family = psutil.Process(consumer.pid).children(recursive=True)
    os.kill(consumer.pid, signal.SIGKILL)
    os.kill(worker.pid, signal.SIGKILL)
    consumer.wait(10)
    assert not psutil.wait_procs(family, timeout=15)[1]
    assert [status(conn, jobs[i]) for i in held] == ["started"] * len(held)  # never written: not finished
    result = run_cli(
        "consumer_main.py", "--workers", "1", "--queue", QUEUE, "--burst",
        env=cli_env(WORKQUEUE_EXTRA_TASKS="tests.fault_tasks", REDIS_URL=redis_url),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert all(status(conn, job) == "finished" for job in jobs)
    # at least once: the jobs whose ends were lost ran again, as did the one running; the others once
    again = set(held) | {LONG_AT}
    assert [runs(tmp_path, i) for i in range(len(jobs))] == [2 if i in again else 1 for i in range(len(jobs))]


@pytest.mark.parametrize("how", ["warm", "cold"])
def test_a_stopping_worker_writes_the_ends_it_holds(conn, processes, redis_url, tmp_path, how) -> None:
    jobs, consumer, held = holding_ends(conn, processes, redis_url, tmp_path)
    consumer.send_signal(signal.SIGINT)
    if how == "cold":
        time.sleep(0.3)  # two signals sent at once are delivered as one
        consumer.send_signal(signal.SIGTERM)  # a second signal: stop at once
    consumer.communicate(timeout=60)
    assert [status(conn, jobs[i]) for i in held] == ["finished"] * len(held)
    # warm: the long job ran to its end; cold: it was handed back
    assert status(conn, jobs[LONG_AT]) == ("finished" if how == "warm" else "queued")
    assert [runs(tmp_path, i) for i in range(LONG_AT + 1)] == [1] * (LONG_AT + 1)
    assert all(status(conn, job) == "queued" for job in jobs[LONG_AT + 1 :])  # those claimed ahead given back


def test_an_idle_worker_writes_the_ends_it_holds_before_it_waits(conn, processes, redis_url, tmp_path) -> None:
    jobs = enqueue_runs(conn, tmp_path, [0.0, 0.0])
    start(processes, redis_url, WORKQUEUE_END_HOLD="60")
    # held for up to 60 s while jobs come; once the queue is empty, written before the worker waits
    wait_for(lambda: all(status(conn, job) == "finished" for job in jobs), 20, "both jobs to finish")
    later = tmp_path / "later"
    later.mkdir()
    more = enqueue_runs(conn, later, [0.0])
    wait_for(lambda: status(conn, more[0]) == "finished", 20, "a job enqueued to the idle worker to finish")
    assert [runs(tmp_path, 0), runs(tmp_path, 1), runs(later, 0)] == [1, 1, 1]


@pytest.mark.parametrize("value", ["soon", "-1", "inf"])
def test_a_wrong_end_hold_stops_the_consumer_before_any_worker_starts(redis_url, value) -> None:
    result = run_cli(
        "consumer_main.py", "--workers", "1", "--queue", QUEUE, "--burst",
        env=cli_env(REDIS_URL=redis_url, WORKQUEUE_END_HOLD=value),
    )  # fmt: skip
    assert result.returncode == 2
    assert "WORKQUEUE_END_HOLD" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_ends_held_while_redis_lost_its_scripts_are_written_once_it_has_them_again(
    conn, processes, redis_url, tmp_path
) -> None:
    jobs, consumer, held = holding_ends(conn, processes, redis_url, tmp_path)
    conn.script_flush()  # as a restarted Redis: the next request (its ends, its claim) meets NOSCRIPT
    wait_for(lambda: all(status(conn, job) == "finished" for job in jobs), 60, "every job to finish")
    assert held and [runs(tmp_path, i) for i in range(len(jobs))] == [1] * len(jobs)
    assert consumer.poll() is None
