"""Batches, backpressure, queue order, statistics and the Python API, with real worker processes."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time

import pytest
from rq import Queue
from rq.job import Job

import workqueue
from tests.helpers import ROOT, Processes, run_cli, wait_for
from workqueue import batches, jobstats
from workqueue.jobs import SERIALIZER


def batch_id_of(output: str) -> str:
    return re.search(r"batch ([0-9a-f]{12}): enqueued", output).group(1)


def test_wait_prints_a_line_per_task_then_the_batch_summary(conn, processes: Processes) -> None:
    processes.start("consumer_main.py", "--workers", "2")
    result = run_cli("producer_main.py", "--task", "sleep", "--param", "seconds=0.2", "--count", "3", "--wait")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if " sleep finished in " in line]
    assert len(lines) == 3 and all('{"slept": 0.2' in line for line in lines)
    batch = batch_id_of(result.stdout)
    assert re.search(rf"batch {batch}: finished 3, failed 0 of 3 in \d+\.\d\d s", result.stdout)
    quiet = run_cli(
        "producer_main.py", "--task", "sleep", "--param", "seconds=0.1", "--count", "2", "--wait", "--quiet"
    )
    assert (
        quiet.returncode == 0 and " sleep finished in " not in quiet.stdout and "finished 2, failed 0" in quiet.stdout
    )


@pytest.mark.slow
def test_batch_callbacks_count_each_task_once_with_result_and_duration(conn, processes: Processes) -> None:
    ends, done = [], []
    batch = workqueue.enqueue_many([("primes", {"n": 1000}), ("scrape", {"url": "http://127.0.0.1:1/"})])
    processes.start("consumer_main.py", "--workers", "2")
    summary = batch.wait(on_task=ends.append, on_done=done.append, timeout=60)
    assert done == [summary] and (summary.total, summary.finished, summary.failed) == (2, 1, 1)
    assert summary.elapsed is not None and summary.elapsed >= 0
    by_task = {end.task: end for end in ends}
    assert by_task["primes"].outcome == "finished" and by_task["primes"].detail == {"n": 1000, "primes": 168}
    assert by_task["scrape"].outcome == "failed" and "ConnectError" in by_task["scrape"].detail
    assert all(end.duration >= 0 for end in ends)
    # The group is RQ's: every job of the batch carries its id.
    assert {Job.fetch(j, connection=conn, serializer=SERIALIZER).group_id for j in batch.job_ids} == {batch.id}


def test_producer_follows_a_batch_already_running(conn, processes: Processes) -> None:
    first = run_cli("producer_main.py", "--task", "sleep", "--param", "seconds=0.3", "--count", "4")
    batch = batch_id_of(first.stdout)
    processes.start("consumer_main.py", "--workers", "2")
    followed = run_cli("producer_main.py", "--batch", batch)
    assert followed.returncode == 0, followed.stderr
    assert (
        followed.stdout.count(" sleep finished in ") == 4
        and f"batch {batch}: finished 4, failed 0 of 4" in followed.stdout
    )
    unknown = run_cli("producer_main.py", "--batch", "nope")
    assert unknown.returncode == 2 and "no such batch: nope" in unknown.stderr


def test_cancelling_a_batch_cancels_queued_and_stops_running_tasks(conn, processes: Processes) -> None:
    batch = workqueue.enqueue("sleep", {"seconds": 60}, count=3)
    processes.start("consumer_main.py", "--workers", "1")
    wait_for(lambda: Queue("queue_one", connection=conn).started_job_registry.count == 1, 20, "one to start")
    result = run_cli("kill_thread/kill_job.py", "--batch", batch.id)
    assert result.returncode == 0, result.stderr
    assert len(re.findall(r"^job \S+ cancelled", result.stdout, re.M)) == 2
    assert len(re.findall(r"^job \S+ stopped", result.stdout, re.M)) == 1
    summary = batch.wait(timeout=20)
    assert (summary.finished, summary.failed) == (0, 3)
    statuses = sorted(Job.fetch(j, connection=conn, serializer=SERIALIZER).get_status().value for j in batch.job_ids)
    assert statuses == ["canceled", "canceled", "stopped"]
    assert run_cli("kill_thread/kill_job.py", "--batch", "nope").returncode == 2


def test_backpressure_never_grows_the_queue_past_max_queued(conn, processes: Processes) -> None:
    peak, stop = [0], threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], conn.llen("rq:queue:queue_one"))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    processes.start("consumer_main.py", "--workers", "1")
    try:
        result = run_cli("producer_main.py", "--task", "sleep", "--param", "seconds=0.1", "--count", "25",
                         "--max-queued", "4", "--wait", "--quiet")  # fmt: skip
    finally:
        stop.set()
        watcher.join()
    assert result.returncode == 0, result.stderr
    assert "waiting: queue_one holds 4 jobs (--max-queued 4)" in result.stdout
    assert "finished 25, failed 0 of 25" in result.stdout and 1 <= peak[0] <= 4


def test_priority_drains_the_first_queue_before_the_second(conn) -> None:
    workqueue.enqueue("sleep", {"seconds": 0.05}, count=5, queue="low")
    workqueue.enqueue("sleep", {"seconds": 0.05}, count=5, queue="high")
    result = run_cli("consumer_main.py", "--workers", "1", "--queue", "high", "--queue", "low", "--burst", "--verbose")
    order = re.findall(r": (high|low): sleep", result.stderr)
    assert order == ["high"] * 5 + ["low"] * 5, order


def test_round_robin_serves_the_queues_in_turn(conn) -> None:
    workqueue.enqueue("sleep", {"seconds": 0.05}, count=4, queue="a")
    workqueue.enqueue("sleep", {"seconds": 0.05}, count=4, queue="b")
    result = run_cli("consumer_main.py", "--workers", "1", "--queue", "a", "--queue", "b", "--order", "round-robin",
                     "--burst", "--verbose")  # fmt: skip
    order = re.findall(r": (a|b): sleep", result.stderr)
    assert order == ["a", "b"] * 4, order


def test_stats_count_per_queue_and_task_the_same_for_producer_consumer_and_api(conn) -> None:
    workqueue.enqueue("sleep", {"seconds": 0.1}, count=3, queue="s1")
    workqueue.enqueue("scrape", {"url": "http://127.0.0.1:1/"}, retries=0, queue="s1")
    consumer = run_cli("consumer_main.py", "--workers", "2", "--queue", "s1", "--burst")
    produced = run_cli("producer_main.py", "--stats", "--queue", "s1")
    assert produced.returncode == 0
    rows = {
        line.split()[0]: line.split()
        for line in produced.stdout.splitlines()
        if line.startswith("  ") and "task" not in line
    }
    assert rows["sleep"][1:5] == ["3", "3", "0", "0"] and rows["scrape"][1:5] == ["1", "0", "1", "0"]
    # The consumer prints the same table at exit; jobs/s is over "the last minute or so" of the
    # clock, so it may differ between the two calls when a minute turns between them.
    assert without_throughput(produced.stdout.strip()) in without_throughput(consumer.stdout)
    (q,) = workqueue.stats("s1")
    sleep = q.tasks["sleep"]
    assert (sleep.enqueued, sleep.finished, q.queued) == (3, 3, 0)
    assert 0.09 <= jobstats.percentile(sleep.run, 50) < 1 and jobstats.percentile(sleep.wait, 95) >= 0


def test_api_example_runs(conn, processes: Processes) -> None:
    processes.start("consumer_main.py", "--workers", "2")
    result = subprocess.run([sys.executable, "examples/produce.py"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "5 finished, 0 failed" in result.stdout and "148933" in result.stdout


def test_api_validates_before_enqueueing(conn) -> None:
    import pytest

    from workqueue.errors import BadInput

    with pytest.raises(BadInput, match="seconds: expected a number"):
        workqueue.enqueue_many([("sleep", {"seconds": 1}), ("sleep", {"seconds": "x"})])
    assert conn.keys("rq:job:*") == []


def test_wait_times_out(conn) -> None:
    import pytest

    batch = workqueue.enqueue("sleep", {"seconds": 1})
    with pytest.raises(TimeoutError):
        batch.wait(timeout=0.5)
    assert batches.summary(conn, batch.id).done is False


def without_throughput(table: str) -> str:
    """A statistics table with its jobs/s column (the sixth field of a task's row) blanked."""
    return re.sub(r"^(  \S+(?:\s+\S+){4}\s+)\d+\.\d+", r"\1-", table, flags=re.M)
