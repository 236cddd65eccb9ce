"""Side-by-side benchmark: workqueue against bare RQ, in one run, on one Redis.

    make bench            (or: .venv/bin/python bench/run.py [--jobs N])

Prints each figure as ours, RQ's and the ratio. Bounded: a few thousand jobs, a minute or two.
The figures are what this machine measured in this run; they are not asserted anywhere.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from rq import Queue  # noqa: E402
from rq.serializers import JSONSerializer  # noqa: E402

from workqueue import embedded, producer  # noqa: E402

NOOP = "task_def.maths.count_primes"  # with n=0 it returns at once: a no-op through the catalogue


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def commands(conn: redis.Redis) -> int:
    return int(conn.info("stats")["total_commands_processed"])


def drain(conn: redis.Redis, url: str, jobs: int, argv: list[str]) -> tuple[float, float]:
    """Enqueue ``jobs`` no-ops, run ``argv`` (a burst pool of 2) to empty the queue: jobs/s, commands/job."""
    conn.flushall()
    q = Queue("bench", connection=conn, serializer=JSONSerializer)
    calls = [producer.TaskCall.build("primes", {"n": 0}, retries=0)] * jobs
    producer.enqueue(conn, calls, "bench")
    before = commands(conn)
    started = time.monotonic()
    subprocess.run(argv, cwd=ROOT, env=dict(os.environ, REDIS_URL=url), stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=600, check=True)  # fmt: skip
    elapsed = time.monotonic() - started
    done = q.finished_job_registry.get_job_count(cleanup=False)
    if done != jobs:
        raise SystemExit(f"{argv[1]}: only {done} of {jobs} jobs finished")
    return jobs / elapsed, (commands(conn) - before) / jobs


def enqueue_rates(conn: redis.Redis, jobs: int) -> dict[str, tuple[float, float]]:
    """Jobs/s enqueued one call at a time and in bulk: workqueue's producer vs RQ's Queue."""
    conn.flushall()
    call = producer.TaskCall.build("primes", {"n": 0}, retries=0)
    q = Queue("bench-rq", connection=conn, serializer=JSONSerializer)

    def rate(fn) -> float:
        started = time.monotonic()
        fn()
        return jobs / (time.monotonic() - started)

    ours_one = rate(lambda: [producer.enqueue(conn, [call], "bench") for _ in range(jobs)])
    rq_one = rate(lambda: [q.enqueue(NOOP, kwargs={"n": 0}) for _ in range(jobs)])
    ours_bulk = rate(lambda: producer.enqueue(conn, [call] * jobs, "bench"))
    rq_bulk = rate(lambda: q.enqueue_many([Queue.prepare_data(NOOP, kwargs={"n": 0}) for _ in range(jobs)]))
    return {"enqueue, one at a time (jobs/s)": (ours_one, rq_one), "enqueue, bulk (jobs/s)": (ours_bulk, rq_bulk)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    args = parser.parse_args()
    port, folder = free_port(), Path(tempfile.mkdtemp(prefix="wq-bench-"))
    server = subprocess.Popen([str(embedded.server_binary()), "--port", str(port), "--bind", "127.0.0.1",
                               "--dir", str(folder), "--save", "", "--appendonly", "no"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    conn = redis.Redis(port=port)
    try:
        for _ in range(100):
            try:
                conn.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        py = sys.executable
        ours = drain(conn, url, args.jobs, [py, "consumer_main.py", "--workers", "2", "--queue", "bench", "--burst"])
        bare = drain(conn, url, args.jobs, [str(Path(py).parent / "rq"), "worker-pool", "-n", "2", "--burst",
                                            "-S", "json", "-u", url, "bench"])  # fmt: skip
        rows = {"drain, 2 workers (no-op jobs/s)": (ours[0], bare[0]),
                "Redis commands per job (drain)": (ours[1], bare[1])}  # fmt: skip
        rows.update(enqueue_rates(conn, args.jobs))
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(folder, ignore_errors=True)
    print(f"workqueue vs bare RQ {Queue.__module__.split('.')[0]} worker-pool, {args.jobs} jobs, one Redis, "
          f"{os.cpu_count()} cores")
    print(f"{'figure':<36}{'workqueue':>12}{'RQ':>12}{'ratio':>8}")
    for name, (a, b) in rows.items():
        print(f"{name:<36}{a:>12.1f}{b:>12.1f}{a / b:>8.2f}")


if __name__ == "__main__":
    main()
