"""Per-key limits: how long an unlimited job takes to start while 10,000 limited ones wait.

    .venv/bin/python bench/limits.py [--held N] [--samples N]

On a pool of 2 workers, prints each figure with no limited job waiting and with N (default 10,000)
held by a limit (``limit set bench:slow --rate 1/h``), and the ratio: the enqueue-to-start latency
of unlimited no-ops sent one at a time to idle workers (p50, p99), and the time to start one
unlimited no-op enqueued right behind N limited jobs not yet held (the claim first moves them off
the queue, 1,000 per script call). The figures are what this machine measured in this run; nothing
asserts them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import redis
from rq.job import Job

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pool import GAP, QUEUE, consumers, ended, running  # noqa: E402  (bench/pool.py)
from run import redis_server, wait_until  # noqa: E402  (bench/run.py)

from workqueue import limits, producer  # noqa: E402

LIMITED = "bench:slow"
START_TIMEOUT = 60.0


def noop(conn: redis.Redis, count: int = 1, limit_key: str | None = None) -> list[str]:
    call = producer.TaskCall.build("primes", {"n": 0}, retries=0, limit_key=limit_key)
    return [job.id for job in producer.enqueue(conn, [call] * count, QUEUE).jobs]


def latencies(conn: redis.Redis, samples: int) -> list[float]:
    """Milliseconds from enqueued_at to started_at of unlimited no-ops sent GAP apart to idle workers."""
    ids: list[str] = []
    for _ in range(samples):
        ids += noop(conn)
        time.sleep(GAP)
    return [_start_ms(job) for job in ended("workqueue", conn, ids)]


def behind(conn: redis.Redis, held: int) -> float:
    """Milliseconds to start one unlimited no-op enqueued right after ``held`` limited ones."""
    if held:
        noop(conn, held, LIMITED)
    (job,) = ended("workqueue", conn, noop(conn), timeout=START_TIMEOUT)
    return _start_ms(job)


def _start_ms(job: Job) -> float:
    assert job.started_at is not None and job.enqueued_at is not None  # finished jobs have both
    return (job.started_at - job.enqueued_at).total_seconds() * 1000


def figures(conn: redis.Redis, held: int, samples: int) -> dict[str, float]:
    queue_key = f"rq:queue:{QUEUE}"
    if held:
        noop(conn, held, LIMITED)
        wait_until(lambda: limits.held_total(conn, queue_key) >= held - 1, START_TIMEOUT, f"{held} jobs held")
    lat = sorted(latencies(conn, samples))
    return {
        "enqueue->start p50, unlimited job (ms)": statistics.median(lat),
        "enqueue->start p99, unlimited job (ms)": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
        "start of one enqueued behind N limited (ms)": behind(conn, held),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--held", type=int, default=10_000, help="limited jobs waiting (default 10,000)")
    parser.add_argument("--samples", type=int, default=100, help=f"latency samples, {GAP} s apart")
    args = parser.parse_args()
    with redis_server() as (url, conn):
        limits.set_rule(conn, limits.make_rule(LIMITED, "1/h"))
        with running(consumers(url, 2, burst=False)["workqueue"], url):
            wait_until(lambda: len(conn.smembers("rq:workers")) == 2, START_TIMEOUT, "2 workers")
            none = figures(conn, 0, args.samples)
            many = figures(conn, args.held, args.samples)
            held_now = limits.held_total(conn, f"rq:queue:{QUEUE}")
    print(f"per-key limits, a pool of 2 workers; N = {args.held:,} limited jobs ({held_now:,} held at the end)")
    print(f"{'figure':<46}{'none held':>12}{'N held':>12}{'ratio':>8}")
    for name, a in none.items():
        b = many[name]
        print(f"{name:<46}{a:>12.2f}{b:>12.2f}{b / a:>8.2f}")
    print("ratio = with N held / with none: 1 means the held jobs cost an unlimited one nothing")


if __name__ == "__main__":
    main()
