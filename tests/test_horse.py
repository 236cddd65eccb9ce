"""The reused work horse: one process runs job after job, and is replaced when a job fails or
crashes it, when it has grown past its memory bound, or after its job quota; the worker stays."""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil
import pytest
import redis
from rq.job import Job

from tests.helpers import Processes, child_pids, cli_env, enqueue_fault, wait_for, workers
from workqueue.jobs import SERIALIZER, CatalogueJob


def start(processes: Processes, redis_url: str, **env: str):
    consumer = processes.start(
        "consumer_main.py",
        "--workers",
        "1",
        "--queue",
        "queue_one",
        env=cli_env(WORKQUEUE_EXTRA_TASKS="tests.fault_tasks", REDIS_URL=redis_url, **env),
    )
    # its worker, registered (a child process alone could be another: croniter's import once ran ``file``)
    conn = redis.Redis.from_url(redis_url)
    wait_for(lambda: {w.pid for w in workers(conn)} & child_pids(consumer), 20, "the worker to start")
    return consumer


def run(conn: redis.Redis, task: str, **params) -> Job:
    """Enqueue one job and wait for its end."""
    job = enqueue_fault(conn, task, **params)

    def ended() -> Job | None:
        found = CatalogueJob.fetch(job.id, connection=conn, serializer=SERIALIZER)
        return found if found.get_status().value in ("finished", "failed") else None

    return wait_for(ended, 30, f"{task} to end")


def horse_of(job: Job) -> int:
    assert job.get_status().value == "finished", job.latest_result().exc_string
    return job.return_value()["pid"]


def test_one_horse_runs_job_after_job_and_a_failure_replaces_it(conn, processes, redis_url) -> None:
    consumer = start(processes, redis_url)
    (worker,) = child_pids(consumer)
    first, second = horse_of(run(conn, "whoami")), horse_of(run(conn, "whoami"))
    assert first == second != worker  # the same horse, not the worker itself
    assert run(conn, "raise_error").get_status().value == "failed"
    third = horse_of(run(conn, "whoami"))
    assert third != first  # a failed job's horse is not trusted with the next job
    assert run(conn, "segfault").get_status().value == "failed"
    assert horse_of(run(conn, "whoami")) not in (first, third)
    assert child_pids(consumer) == {worker}  # and the worker was never replaced


def test_a_leaking_horse_is_replaced_past_its_memory_bound(conn, processes, redis_url) -> None:
    start(processes, redis_url, WORKQUEUE_HORSE_MAX_RSS_MB="150")
    pids = [horse_of(run(conn, "leak", megabytes=60)) for _ in range(4)]
    # 60 MB more each time: the horse passes 150 MB on its second or third job, and goes.
    assert len(set(pids)) >= 2 and pids[0] == pids[1]


def test_a_horse_is_replaced_after_its_job_quota(conn, processes, redis_url) -> None:
    start(processes, redis_url, WORKQUEUE_HORSE_MAX_JOBS="3")
    pids = [horse_of(run(conn, "whoami")) for _ in range(7)]
    assert pids[0] == pids[1] == pids[2] != pids[3] == pids[4] == pids[5] != pids[6]


def test_a_horse_killed_between_jobs_is_replaced_and_the_next_job_runs(conn, processes, redis_url) -> None:
    consumer = start(processes, redis_url)
    (worker,) = child_pids(consumer)
    idle_horse = horse_of(run(conn, "whoami"))
    os.kill(idle_horse, signal.SIGKILL)  # while it waits for work: the worker learns of it when it sends the next job
    wait_for(
        lambda: not psutil.pid_exists(idle_horse) or psutil.Process(idle_horse).status() == "zombie",
        10,
        "the horse to die",
    )
    job = run(conn, "whoami")
    assert horse_of(job) != idle_horse and job.return_value()["pid"] != worker
    assert child_pids(consumer) == {worker}  # the worker stayed: RQ's loop would have quit on the broken pipe


class _Stop(Exception):
    pass


@pytest.mark.parametrize("threads", [0, 1], ids=["one-thread", "with-another-thread"])
def test_a_stop_signal_arriving_while_the_horse_is_forked_is_not_lost(threads: int) -> None:
    """An idle worker forks its horse ahead of its next job, and its stop handler raises: a stop
    landing in the fork's own handlers would be printed and dropped, and the worker run on. A worker
    has other threads (RQ's pubsub thread), which the kernel hands the signal to while this one
    blocks it."""
    from workqueue.worker.horse import Horse

    done = threading.Event()
    others = [threading.Thread(target=done.wait, args=(30,), daemon=True) for _ in range(threads)]
    for thread in others:
        thread.start()

    armed: list[bool] = []
    os.register_at_fork(before=lambda: armed and os.kill(os.getpid(), signal.SIGTERM))

    def stop(signum, frame):
        raise _Stop()

    previous = signal.signal(signal.SIGTERM, stop)
    before = set(psutil.Process().children())
    try:
        armed.append(True)
        horse = None
        with pytest.raises(_Stop):  # raised once the fork is done, where the worker can act on it
            horse = Horse(lambda inbox, outbox: os.read(inbox, 1))
            # A signal the kernel gives another thread (pytest-xdist's, here) is handled once that
            # thread runs, which a loaded machine may delay past the fork: it is raised here then,
            # and the horse retired as a stopping worker's teardown retires it.
            time.sleep(2)
        if horse is not None:
            horse.retire()
    finally:
        armed.clear()
        signal.signal(signal.SIGTERM, previous)
        done.set()
        for thread in others:
            thread.join()
    assert set(psutil.Process().children()) <= before, "the horse forked for a stopping worker was left running"


def test_the_stop_signals_mask_is_put_back_whatever_raises_as_handlers_are() -> None:
    """After the fork the handlers are put back, and a stop's handler may run (and raise) right as
    it is installed; the blocked stop signals must be unblocked all the same, or this process and
    every one it starts after would never hear a stop (a handler that cannot be set raises here)."""
    from workqueue.worker import horse

    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    with pytest.raises(OSError):
        horse._restore({signal.SIGKILL: signal.SIG_DFL}, before, [])
    assert not signal.pthread_sigmask(signal.SIG_BLOCK, []) & {signal.SIGINT, signal.SIGTERM}
