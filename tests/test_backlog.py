"""The backlog key KEDA reads (``workqueue:backlog:<queue>``, workqueue/backlog.py): its length is
the queue's jobs waiting, running or held back, exactly, through enqueue, finish, failure, retry,
cancel, requeue, delete, a stop, and a worker SIGKILLed with its job handed back; /metrics says the
same."""

from __future__ import annotations

import os
import re
import signal
import threading

import pytest
import redis
from rq import Queue

from tests.helpers import enqueue_fault, enqueue_jobs, start_consumer, status, wait_for, workers
from workqueue import backlog, control
from workqueue.dashboard import metrics
from workqueue.jobs import SERIALIZER

Q = "queue_one"


def size(conn: redis.Redis, queue: str = Q) -> int:
    return conn.zcard(backlog.key(queue))


def test_enqueue_cancel_requeue_delete_without_workers(conn) -> None:
    jobs = enqueue_jobs(conn, count=4, seconds=1)
    assert size(conn) == 4
    assert set(conn.zrange(backlog.key(Q), 0, -1)) == {job.id.encode() for job in jobs}
    assert control.stop_job(conn, jobs[0].id, by="test").outcome == control.Outcome.DONE  # cancelled
    assert size(conn) == 3
    assert control.requeue(conn, jobs[0].id, by="test").outcome == control.Outcome.DONE
    assert size(conn) == 4
    control.stop_job(conn, jobs[1].id, by="test")
    assert control.delete_job(conn, jobs[1].id).outcome == control.Outcome.DONE
    assert control.delete_job(conn, jobs[2].id).outcome == control.Outcome.DONE  # deleted while queued
    assert size(conn) == 2
    assert control.requeue(conn, jobs[3].id, by="test").outcome == control.Outcome.NOTHING_TO_DO  # still queued
    assert size(conn) == 2
    control.cancel_queued(conn, Q, by="test")
    assert size(conn) == 0
    assert b'workqueue_queue_backlog{queue="queue_one"} 0.0' in metrics.render(conn)


@pytest.mark.slow
def test_running_finished_failed_retried_and_stopped_jobs(conn, processes, monkeypatch) -> None:
    monkeypatch.setenv("WORKQUEUE_EXTRA_TASKS", "tests.fault_tasks")
    long = enqueue_jobs(conn, count=1, seconds=30)[0]
    quick = enqueue_jobs(conn, count=3, seconds=0.2)
    failing = enqueue_fault(conn, "raise_error")
    retried = enqueue_fault(conn, "raise_with_retries")  # 2 retries, 1 s apart: scheduled between runs
    assert size(conn) == 6
    start_consumer(processes, conn, 2)
    wait_for(lambda: all(status(conn, j) == "finished" for j in quick), 30, "the quick jobs to finish")
    wait_for(lambda: status(conn, failing) == "failed", 30, "the failing job to fail")
    assert status(conn, long) == "started"
    wait_for(lambda: status(conn, retried) == "failed", 30, "the retried job to fail for good")
    assert size(conn) == 1  # the long one, running: the queue itself is empty
    assert Queue(Q, connection=conn, serializer=SERIALIZER).count == 0
    assert f'workqueue_queue_backlog{{queue="{Q}"}} 1.0'.encode() in metrics.render(conn)
    assert control.stop_job(conn, long.id, by="test").outcome == control.Outcome.DONE
    assert size(conn) == 0


@pytest.mark.slow
def test_a_sigkilled_workers_job_stays_counted_until_another_worker_finishes_it(conn, processes) -> None:
    job = enqueue_jobs(conn, count=1, seconds=3)[0]
    start_consumer(processes, conn, 1)
    wait_for(lambda: status(conn, job) == "started", 20, "the job to start")
    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.append(size(conn))
            stop.wait(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        worker = next(w for w in workers(conn) if w.get_current_job_id() == job.id)
        os.kill(worker.pid, signal.SIGKILL)  # the pool replaces it; a sweep hands the job back
        fetched = wait_for(
            lambda: status(conn, job) == "finished" and conn.hget(job.key, "meta"), 40, "the job to run again"
        )
    finally:
        stop.set()
        watcher.join()
    seen.append(size(conn))  # after the end, whenever the watcher last looked
    assert re.search(rb"died|gone|quit", fetched)  # it was handed back, not finished by the killed run
    first_zero = seen.index(0)  # counted (1) from the kill to the re-run's end, then not (0): never 2
    assert first_zero > 0 and set(seen[:first_zero]) == {1} and set(seen[first_zero:]) == {0}
    assert size(conn) == 0


def test_delayed_dependent_unique_and_prioritised_jobs_count_once_and_leave_at_their_end(conn) -> None:
    """The other ways in: a delayed batch, a batch after another, unique calls (a duplicate adds
    nothing), a prioritised job; cancelling each takes it out."""
    from datetime import timedelta

    import workqueue
    from workqueue import producer

    later = workqueue.enqueue("sleep", {"seconds": 1}, delay=timedelta(hours=1))
    first = workqueue.enqueue("sleep", {"seconds": 1}, count=2)
    after = workqueue.enqueue("sleep", {"seconds": 1}, after=first)
    call = producer.TaskCall.build("sleep", {"seconds": 2}, unique=True, priority="urgent")
    once = producer.enqueue(conn, [call, call], Q)
    again = producer.enqueue(conn, [call], Q)
    assert len(once.jobs) == 1 and len(again.jobs) == 0 and again.existing
    ids = [*later.job_ids, *first.job_ids, *after.job_ids, once.jobs[0].id]
    assert set(conn.zrange(backlog.key(Q), 0, -1)) == {i.encode() for i in ids}
    for job_id in ids:
        control.stop_job(conn, job_id, by="test")
    assert size(conn) == 0
