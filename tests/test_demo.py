"""The four classic scenarios (``python -m workqueue demo NAME``), run as a user runs them, against a
real redis-server: what they print, what they leave in Redis, and that no process outlives them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import psutil
import pytest
import redis
from rq import Queue
from rq.job import Job

from tests.helpers import ROOT, Command, cli_env, run_cli, wait_for
from workqueue import batches, demos
from workqueue.cli import demo as demo_cli
from workqueue.jobs import SERIALIZER

pytestmark = pytest.mark.slow


def run_demo(name: str, redis_url: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "workqueue", "demo", name], cwd=ROOT, capture_output=True,
                            text=True, timeout=150, env=cli_env(REDIS_URL=redis_url))  # fmt: skip
    assert_nothing_left(result.stdout)
    return result


def assert_nothing_left(output: str) -> None:
    """Every consumer the demo printed as started is gone (the demo reaped it: no zombie either)."""
    pids = [int(pid) for pid in re.findall(r"consumer-\d: started \(pid (\d+)\)", output)]
    assert pids, output
    assert not [pid for pid in pids if psutil.pid_exists(pid)], output


def finished_jobs(conn: redis.Redis, queue: str) -> list[Job]:
    q = Queue(queue, connection=conn, serializer=SERIALIZER)
    jobs = Job.fetch_many(q.finished_job_registry.get_job_ids(), connection=conn, serializer=SERIALIZER)
    return sorted(jobs, key=lambda job: job.started_at)


def batch_summaries(conn: redis.Redis) -> list[batches.BatchSummary]:
    ids = [k.decode().removeprefix(batches.PREFIX) for k in conn.scan_iter(batches.PREFIX + "*")]
    return [batches.summary(conn, i) for i in ids if ":" not in i]


def assert_clean_end(conn: redis.Redis, queues: list[str], jobs: int) -> None:
    """All jobs finished, none left queued or running, no worker still registered, and the table
    the demo printed has the counts producer_main.py --stats prints."""
    for queue in queues:
        q = Queue(queue, connection=conn, serializer=SERIALIZER)
        assert (q.count, q.started_job_registry.count, q.failed_job_registry.count) == (0, 0, 0)
        assert q.finished_job_registry.count == jobs
        assert conn.scard(f"rq:workers:{queue}") == 0
        stats = run_cli("producer_main.py", "--stats", "--queue", queue)
        assert stats.returncode == 0, stats.stderr
        (row,) = [line.split() for line in stats.stdout.splitlines() if line.startswith("  sleep")]
        assert row[1:5] == [str(jobs), str(jobs), "0", "0"]


def test_basic_one_producer_one_consumer(conn, redis_url: str) -> None:
    result = run_demo("basic", redis_url)
    assert result.returncode == 0, result.stdout + result.stderr
    ran = re.findall(
        r"consumer-1/w1 ran sleep\(seconds=0\.3\) from demo-basic \(job \w+, producer-1\): finished", result.stdout
    )
    assert len(ran) == 5
    assert "producer-1: enqueued batch" in result.stdout and "consumer-1: stopped (exit 0)" in result.stdout
    assert re.search(r"^  sleep\s+5\s+5\s+0\s+0\s", result.stdout, re.M)  # the statistics table
    assert re.search(r"^demo basic: ok: .*5 finished, 0 failed", result.stdout, re.M)
    assert_clean_end(conn, ["demo-basic"], 5)
    assert [(s.total, s.finished, s.failed) for s in batch_summaries(conn)] == [(5, 5, 0)]


def test_many_three_producers_two_consumers_share_one_queue(conn, redis_url: str) -> None:
    result = run_demo("many", redis_url)
    assert result.returncode == 0, result.stdout + result.stderr
    for n in (1, 2, 3):
        assert f"producer-{n}: enqueued batch" in result.stdout
        assert len(re.findall(rf"ran sleep\S+ from demo-many \(job \w+, producer-{n}\): finished", result.stdout)) == 4
    for n in (1, 2):  # both consumers took part
        assert re.search(rf"^\[[ \d.]+s\] consumer-{n}/w1 ran ", result.stdout, re.M)
    assert_clean_end(conn, ["demo-many"], 12)
    assert sorted((s.total, s.finished, s.failed) for s in batch_summaries(conn)) == [(4, 4, 0)] * 3
    workers = {job.worker_name for job in finished_jobs(conn, "demo-many")}
    assert len(workers) == 2, workers  # two consumers' workers, named after their two pools


def test_fast_producer_waits_on_the_bounded_queue(conn, redis_url: str) -> None:
    result = run_demo("fast-producer", redis_url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "holds 3 (--max-queued 3): waiting for the consumer to take one" in result.stdout
    waited, peak = map(int, re.search(r"waited (\d+) times .* held at most (\d+) jobs", result.stdout).groups())
    assert waited >= 1 and 1 <= peak <= 3
    assert_clean_end(conn, ["demo-fast-producer"], 10)
    jobs = sorted(finished_jobs(conn, "demo-fast-producer"), key=lambda job: job.enqueued_at)
    # Redis says the producer waited: its last job went in only after the consumer had ended one.
    assert jobs[-1].enqueued_at > jobs[0].ended_at


def test_multi_queue_round_robin_serves_the_queues_in_turn(conn, redis_url: str) -> None:
    result = run_demo("multi-queue", redis_url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "--order round-robin" in result.stdout and "served in this order: a b c a b c a b c a b c" in result.stdout
    queues = ["demo-multi-a", "demo-multi-b", "demo-multi-c"]
    assert_clean_end(conn, queues, 4)
    started = sorted((job.started_at, job.origin) for q in queues for job in finished_jobs(conn, q))
    assert [origin for _, origin in started] == queues * 4


def test_an_unknown_scenario_exits_2_naming_the_four(redis_url: str) -> None:
    result = subprocess.run([sys.executable, "-m", "workqueue", "demo", "nope"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert all(f"'{name}'" in line for name in ("basic", "many", "fast-producer", "multi-queue")), line
    helped = subprocess.run([sys.executable, "-m", "workqueue", "demo", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert helped.returncode == 0 and all(name in helped.stdout for name in demos.SCENARIOS)
    assert list(demo_cli.SCENARIOS) == list(demos.SCENARIOS)  # the help describes exactly the scenarios played


def start_demo(name: str, redis_url: str) -> Command:
    return Command([sys.executable, "-m", "workqueue", "demo", name], cwd=ROOT, env=cli_env(REDIS_URL=redis_url),
                   stdin=subprocess.DEVNULL, text=True, start_new_session=True)  # fmt: skip


@pytest.mark.parametrize("stop", ["ctrl-c", "consumer-killed"])
def test_every_process_is_stopped_on_ctrl_c_and_on_failure(conn, redis_url: str, stop: str) -> None:
    demo = start_demo("fast-producer", redis_url)
    try:
        wait_for(lambda: "waiting for the consumer" in demo.output()[0], 60, "the producer to wait")
        family = psutil.Process(demo.pid).children(recursive=True)  # consumer, its workers and horses
        assert len(family) >= 2
        if stop == "ctrl-c":
            os.killpg(demo.pid, signal.SIGINT)  # what a Ctrl-C at its terminal sends
        else:
            consumer = int(re.search(r"consumer-1: started \(pid (\d+)\)", demo.output()[0]).group(1))
            os.kill(consumer, signal.SIGKILL)
        demo.wait(60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    out, err = demo.output()
    _gone, alive = psutil.wait_procs(family, timeout=30)
    for leftover in alive:
        leftover.kill()
    assert not alive, f"outlived the demo: {alive}"
    if stop == "ctrl-c":
        assert demo.returncode == 130 and "error: " in err, out + err  # click says "aborted"
        assert "consumer-1: stopped (exit 0)" in out  # gracefully: it finished its job first
        assert conn.scard("rq:workers:demo-fast-producer") == 0
    else:
        assert demo.returncode == 1, out + err
        assert "error: consumer-1 exited on its own (killed by SIGKILL) before its jobs were done" in err
