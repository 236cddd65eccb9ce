"""Autoscaling, with real consumers: ``consumer_main.py --workers MIN-MAX`` grows under a burst, never
above MAX, shrinks to MIN once idle, never by stopping a busy worker, and refuses bad ranges."""

from __future__ import annotations

import signal
import time

import pytest
import redis

from tests.helpers import (
    Processes,
    child_pids,
    cli_env,
    client_for,
    enqueue_fault,
    enqueue_jobs,
    run_cli,
    status,
    wait_for,
    workers,
)
from workqueue.worker.autoscale import Autoscaler, Scaling


@pytest.mark.parametrize("value", ["0-3", "5-2", "2-11", "a-b"])
def test_a_bad_range_is_one_line_and_exit_2(value: str) -> None:
    result = run_cli("consumer_main.py", "--workers", value, "--queue", "q")
    assert result.returncode == 2, result.stderr
    assert value in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_the_decisions_stay_within_the_bounds() -> None:
    """Pure decisions: growth is capped by the maximum (workers still stopping count against it);
    only a worker idle long enough, with nothing waiting, is stopped; never below the minimum."""

    class W:
        def __init__(self, name: str, state: str) -> None:
            self.name, self.state = name, state

    scaler = Autoscaler(Scaling(2, 10, backlog=2, idle=5))
    up = scaler.decide([W("a", "busy"), W("b", "busy")], 2, 40, set(), 0.0)
    assert up is not None and up.target == 10 and up.reason == "scaled up to 10: 40 waiting for 2 workers"
    assert scaler.decide([W("a", "busy")], 9, 400, {"x"}, 0.0) is None  # 9 + 1 stopping = 10
    idle = [W("a", "idle"), W("b", "busy"), W("c", "idle")]
    assert scaler.decide(idle, 3, 0, set(), 10.0) is None  # idle since 10.0
    assert scaler.decide(idle, 3, 1, set(), 20.0) is None  # something waits
    down = scaler.decide(idle, 3, 0, set(), 20.0)
    assert down is not None and down.retire in {"a", "c"} and down.target == 2
    assert scaler.decide(idle, 2, 0, set(), 60.0) is None  # at the minimum


def out_so_far(consumer) -> str:
    return consumer.output()[0]


def _pool_size(conn: redis.Redis, consumer) -> int:
    pids = child_pids(consumer)
    return len([w for w in workers(conn) if w.pid in pids])


@pytest.mark.slow
def test_grows_under_a_burst_never_above_max_then_shrinks_to_min(
    conn: redis.Redis, redis_url: str, processes: Processes
) -> None:
    env = cli_env(REDIS_URL=redis_url, WORKQUEUE_SCALE_UP_BACKLOG="2", WORKQUEUE_SCALE_IN_IDLE="2")
    consumer = processes.start("consumer_main.py", "--workers", "2-4", "--queue", "queue_one", env=env)
    wait_for(lambda: _pool_size(conn, consumer) == 2, 30, "2 workers")
    jobs = enqueue_jobs(conn, "sleep", count=16, seconds=1)
    seen = []
    deadline = time.monotonic() + 120
    while not all(status(conn, job) == "finished" for job in jobs):
        assert time.monotonic() < deadline, "the burst did not end"
        seen.append(_pool_size(conn, consumer))
        time.sleep(0.2)
    assert max(seen) == 4, seen
    # The dashboard's live data shows the pool, its bounds and why it last scaled.
    dashboard = client_for(redis_url)

    def pool_shown() -> list:
        return [p for p in dashboard.get("/api/live").get_json()["pools"] if p["bounds"] == "2-4" and p["scaled"]]

    shown = wait_for(pool_shown, 15, "the pool on the dashboard")
    assert "scaled" in shown[0]["scaled"] and shown[0]["name"] in out_so_far(consumer), shown
    wait_for(lambda: _pool_size(conn, consumer) == 2, 60, "the pool to shrink back to 2")
    time.sleep(3)  # idle beyond the idle period: never below the minimum
    assert _pool_size(conn, consumer) == 2
    consumer.send_signal(signal.SIGINT)
    assert consumer.wait(30) == 0
    out, _err = consumer.output()
    assert "scaled up to 4: " in out and "waiting for 2 workers" in out, out
    assert "scaled down to 3: " in out and "scaled down to 2: " in out and "nothing waiting" in out, out
    assert "died" not in out


@pytest.mark.slow
def test_never_stops_a_busy_worker(conn: redis.Redis, redis_url: str, processes: Processes, tmp_path) -> None:
    """Waves of jobs of mixed lengths, the pool scaling in as soon as a worker is idle: every job
    runs exactly once (a worker stopped while busy would hand its job back, to run again)."""
    env = cli_env(
        REDIS_URL=redis_url,
        WORKQUEUE_EXTRA_TASKS="tests.fault_tasks",
        WORKQUEUE_SCALE_UP_BACKLOG="1",
        WORKQUEUE_SCALE_IN_IDLE="0",
    )
    consumer = processes.start("consumer_main.py", "--workers", "1-4", "--queue", "queue_one", env=env)
    wait_for(lambda: _pool_size(conn, consumer) == 1, 30, "1 worker")
    jobs = []
    for wave in range(4):
        for i in range(6):
            marker = tmp_path / f"run-{wave}-{i}"
            jobs.append(
                (marker, enqueue_fault(conn, "count_runs", marker=str(marker), seconds=0.2 + (i * 7 % 6) * 0.3))
            )
        time.sleep(1.5)
    wait_for(lambda: all(status(conn, job) == "finished" for _, job in jobs), 120, "every job to finish")
    for marker, job in jobs:
        assert marker.read_text().count("\n") == 1, f"job {job.id} ran {marker.read_text().count(chr(10))} times"
    consumer.send_signal(signal.SIGINT)
    assert consumer.wait(30) == 0
    out, err = consumer.output()
    assert "scaled up to" in out and "scaled down to" in out, out
    assert "died" not in out + err and "handed back" not in out + err, (out, err)
