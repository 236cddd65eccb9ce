"""Enqueueing through the HTTP gateway beside enqueueing directly on Redis, in one run on one Redis.

    make bench            (or: .venv/bin/python bench/gateway.py [--jobs N] [--threads T] [--server S]
                                                            [--client C] [--quick])

Prints each figure as direct, through the gateway, and the ratio (gateway / direct): one job per
request from one thread and from T threads, and 1,000-job batches (the median of 9 each way, sent
in turn). Bounded: about 26,000 jobs, well under a minute. The figures are what this machine
measured in this run; nothing asserts them.

The HTTP client runs in this process, on the same two cores as the gateway and Redis, so its own
cost counts against the gateway: the default (``--client stdlib``: ``http.client``, one kept-alive
connection per thread) costs ~0.1 ms a request; ``--client httpx`` (what the tests and
``workqueue.gateway.client`` use) ~0.5 ms more, which alone holds one job per request under ~60%.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from run import free_port, redis_server, wait_until  # noqa: E402  (bench/run.py, beside this file)

from workqueue import producer, wsgi_server  # noqa: E402

TASK, PARAMS = "primes", {"n": 0}
BATCH = 1000
#: Batches each way for the batch figure (``--quick``: 3), alternated one by one.
BATCH_ROUNDS = 9


def rate(jobs: int, send: Callable[[], object], threads: int = 1) -> float:
    """Jobs per second for ``jobs`` calls of ``send`` from ``threads`` threads."""
    started = time.monotonic()
    if threads == 1:
        for _ in range(jobs):
            send()
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda _: send(), range(jobs)))
    return jobs / (time.monotonic() - started)


def paired_rates(rounds: int, jobs: int, one: Callable[[], object], other: Callable[[], object]) -> tuple[float, float]:
    """Median jobs per second of ``one`` and of ``other`` (each call sends ``jobs``), the two called
    in turn ``rounds`` times: a batch takes ~0.1 s, so a single one of each made the ratio mostly
    noise (0.65 to 1.20 in runs minutes apart), and in turn both meet the same Redis (its size grows)."""
    ones, others = [], []
    for _ in range(rounds):
        ones.append(rate(1, one) * jobs)
        others.append(rate(1, other) * jobs)
    return statistics.median(ones), statistics.median(others)


class Stdlib:
    """POSTs with ``http.client``: one kept-alive connection per thread."""

    def __init__(self, port: int) -> None:
        self.port, self.local = port, threading.local()

    def post(self, path: str, body: bytes) -> None:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        answer = conn.getresponse()
        answer.read()
        if answer.status >= 400:
            raise RuntimeError(f"POST {path}: {answer.status}")

    def close(self) -> None:
        pass  # each thread's connection closes with the thread


class Httpx:
    """POSTs with one ``httpx.Client`` (its pool shared by the threads)."""

    def __init__(self, port: int) -> None:
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

    def post(self, path: str, body: bytes) -> None:
        self.http.post(path, content=body, headers={"Content-Type": "application/json"}).raise_for_status()

    def close(self) -> None:
        self.http.close()


CLIENTS = {"stdlib": Stdlib, "httpx": Httpx}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000, help="jobs per figure")
    parser.add_argument("--threads", type=int, default=8, help="client threads of the threaded figure")
    parser.add_argument("--server", choices=wsgi_server.SERVERS, default=wsgi_server.SERVERS[0],
                        help="the gateway's WSGI server (gateway_main.py --server)")  # fmt: skip
    parser.add_argument("--client", choices=CLIENTS, default="stdlib", help="the HTTP client (see above)")
    parser.add_argument("--quick", action="store_true", help="200 jobs per figure")
    args = parser.parse_args()
    rounds = BATCH_ROUNDS
    if args.quick:
        args.jobs, rounds = 200, 3
    call = producer.TaskCall.build(TASK, PARAMS, retries=0)
    # The same jobs both ways: no retries (a retried job carries RQ's Retry, more to build and write).
    one = json.dumps({"task": TASK, "params": PARAMS, "retries": 0}).encode()
    batch = json.dumps({"tasks": [{"task": TASK, "params": PARAMS}] * BATCH, "retries": 0}).encode()
    with redis_server() as (url, conn):
        port = free_port()
        argv = [sys.executable, "gateway_main.py", "--port", str(port), "--server", args.server]
        gateway = subprocess.Popen(argv, cwd=ROOT, env=dict(os.environ, REDIS_URL=url), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)  # fmt: skip
        client = CLIENTS[args.client](port)
        try:
            wait_until(lambda: _answers(port), 20, "the gateway to answer", poll=0.1)
            post = client.post

            rows = {
                "one job per request, 1 thread (jobs/s)": (
                    rate(args.jobs, lambda: producer.enqueue(conn, [call], "bench")),
                    rate(args.jobs, lambda: post("/jobs", one)),
                ),
                f"one job per request, {args.threads} threads (jobs/s)": (
                    rate(args.jobs, lambda: producer.enqueue(conn, [call], "bench"), args.threads),
                    rate(args.jobs, lambda: post("/jobs", one), args.threads),
                ),
                f"{BATCH}-job batches, median of {rounds} in turn (jobs/s)": paired_rates(
                    rounds,
                    BATCH,
                    lambda: producer.enqueue(conn, [call] * BATCH, "bench"),
                    lambda: post("/batches", batch),
                ),
            }
        finally:
            client.close()
            gateway.terminate()
            gateway.wait(20)
    print(f"enqueueing directly on Redis vs through the gateway ({args.server}; client {args.client}), "
          f"{args.jobs} jobs per figure of one job per request, {os.cpu_count()} cores")  # fmt: skip
    print(f"{'figure':<46}{'direct':>12}{'gateway':>12}{'ratio':>8}")
    for name, (direct, through) in rows.items():
        print(f"{name:<46}{direct:>12.1f}{through:>12.1f}{through / direct:>8.2f}")
    print("ratio = gateway / direct (the gateway adds an HTTP request, a JSON parse and validation per request)")


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/tasks", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    main()
