"""The dashboard and the gateway on each WSGI server they can run on, in one run on one Redis.

    make bench            (or: .venv/bin/python bench/servers.py [--jobs N] [--threads T] [--quick])

For each server (werkzeug, Flask's development server, the baseline; granian; waitress; gunicorn
with 2 gthread workers): the gateway's one job per request from 1 and from T client threads and its
1,000-job batches, each also as a share of enqueueing directly on Redis; and the dashboard's data
endpoint (/api/live, over 1,000 queued jobs) from 1 and from T threads. Every server runs the
same app, started by ``gateway_main.py``/``dashboard_main.py --server S``. The figures are what this
machine measured in this run; nothing asserts them. README "Dashboard and gateway servers" quotes one.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway import BATCH, PARAMS, TASK, rate  # noqa: E402  (bench/gateway.py, beside this file)
from run import free_port, redis_server, wait_until  # noqa: E402

from workqueue import producer, wsgi_server  # noqa: E402

QUEUE = "bench"


@contextmanager
def served(entry: str, server: str, url: str, probe: str) -> Iterator[httpx.Client]:
    """``entry`` (gateway_main.py or dashboard_main.py) on ``server`` and a free port, until the block ends."""
    port = free_port()
    process = subprocess.Popen([sys.executable, entry, "--port", str(port), "--server", server], cwd=ROOT,
                               env=dict(os.environ, REDIS_URL=url), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    try:
        wait_until(lambda: _answers(http, probe), 30, f"{entry} on {server} to answer", poll=0.1)
        yield http
    finally:
        http.close()
        process.terminate()
        process.wait(30)


def _answers(http: httpx.Client, path: str) -> bool:
    try:
        return http.get(path).status_code == 200
    except httpx.HTTPError:
        return False


def batches(jobs: int) -> int:
    """Batches per batch figure: enough that one slow request does not make the figure."""
    return max(3, jobs // 200)


def direct_rates(conn: redis.Redis, jobs: int, threads: int) -> list[float]:
    """Enqueueing on Redis without HTTP: one job per call from 1 and ``threads`` threads, and BATCH-job batches."""
    call = producer.TaskCall.build(TASK, PARAMS, retries=0)
    return [
        rate(jobs, lambda: producer.enqueue(conn, [call], QUEUE)),
        rate(jobs, lambda: producer.enqueue(conn, [call], QUEUE), threads),
        BATCH * rate(batches(jobs), lambda: producer.enqueue(conn, [call] * BATCH, QUEUE)),
    ]


def gateway_rates(http: httpx.Client, jobs: int, threads: int) -> list[float]:
    one, batch = {"task": TASK, "params": PARAMS}, {"tasks": [{"task": TASK, "params": PARAMS}] * BATCH}

    def post(path: str, body: dict) -> None:
        http.post(path, json=body).raise_for_status()

    return [
        rate(jobs, lambda: post("/jobs", one)),
        rate(jobs, lambda: post("/jobs", one), threads),
        BATCH * rate(batches(jobs), lambda: post("/batches", batch)),
    ]


def dashboard_rates(http: httpx.Client, requests: int, threads: int) -> list[float]:
    def live() -> None:
        http.get("/api/live").raise_for_status()

    return [rate(requests, live), rate(requests, live, threads)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000, help="jobs (gateway) or requests (dashboard) per figure")
    parser.add_argument("--threads", type=int, default=8, help="client threads of the threaded figures")
    parser.add_argument("--quick", action="store_true", help="200 jobs or requests per figure")
    args = parser.parse_args()
    if args.quick:
        args.jobs = 200
    servers = ("werkzeug", *(s for s in wsgi_server.SERVERS if s != "werkzeug"))
    rows: dict[str, list[float]] = {}
    gateway_names = ["gateway, one job per request, 1 thread (jobs/s)",
                     f"gateway, one job per request, {args.threads} threads (jobs/s)",
                     f"gateway, {BATCH}-job batches (jobs/s)"]  # fmt: skip
    dashboard_names = ["dashboard /api/live, 1 thread (requests/s)",
                       f"dashboard /api/live, {args.threads} threads (requests/s)"]  # fmt: skip
    with redis_server() as (url, conn):
        direct = direct_rates(conn, args.jobs, args.threads)
        for server in servers:
            conn.flushall()
            with served("gateway_main.py", server, url, "/tasks") as http:
                figures = gateway_rates(http, args.jobs, args.threads)
            for name, figure, base in zip(gateway_names, figures, direct, strict=True):
                rows.setdefault(name, []).append(figure)
                rows.setdefault(f"  as a share of direct enqueueing ({base:.0f}/s)", []).append(figure / base)
        conn.flushall()
        producer.enqueue(conn, [producer.TaskCall.build(TASK, PARAMS, retries=0)] * 1000, QUEUE)
        for server in servers:
            with served("dashboard_main.py", server, url, "/api/live") as http:
                for name, figure in zip(dashboard_names, dashboard_rates(http, args.jobs, args.threads), strict=True):
                    rows.setdefault(name, []).append(figure)
    print(f"the gateway and the dashboard on each WSGI server, {args.jobs} jobs or requests per figure, "
          f"{os.cpu_count()} cores (gunicorn: {wsgi_server.GUNICORN_WORKERS} workers x {wsgi_server.THREADS} "
          f"threads; waitress: {wsgi_server.THREADS} threads; granian: {wsgi_server.GRANIAN_THREADS} "
          "Python threads)")  # fmt: skip
    print(f"{'figure':<56}" + "".join(f"{s:>10}" for s in servers))
    for name, figures in rows.items():
        digits = 2 if name.startswith("  ") else 0
        print(f"{name:<56}" + "".join(f"{f:>10.{digits}f}" for f in figures))


if __name__ == "__main__":
    main()
