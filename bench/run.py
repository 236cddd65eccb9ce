"""Side-by-side benchmark: workqueue against bare RQ, in one run, on one Redis.

    make bench            (or: .venv/bin/python bench/run.py [--jobs N])

Prints each figure as ours, RQ's and the ratio (ours / RQ's): drain rate (ours the median of
three drains), Redis commands and round trips per job, CPU per job in the consumer's processes and
in Redis, enqueue rates, then on a long-running pool of 10 workers its start-up time, idle memory,
enqueue-to-start latency and the wall time of 40 half-second sleeps. Bounded: a few thousand jobs,
three or four minutes. The two consumers run one after the other, never at once. The figures are
what this machine measured in this run; they are not asserted anywhere.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import redis  # noqa: E402
import rq  # noqa: E402
from rq import Queue, Worker  # noqa: E402
from rq.job import Job, JobStatus  # noqa: E402
from rq.serializers import JSONSerializer  # noqa: E402
from rq.utils import now  # noqa: E402

import task_def  # noqa: E402
from workqueue import embedded, producer  # noqa: E402

NOOP = "task_def.maths.count_primes"  # with n=0 it returns at once: a no-op through the catalogue
OURS, RQ = "workqueue", "RQ"
QUEUE = "bench"

#: The long-running pool whose start-up, idle memory, start latency and sleep wall time are measured.
POOL = 10
#: NAPS sleeps of NAP seconds on POOL workers take NAPS / POOL * NAP seconds at best.
NAPS, NAP = 40, 0.5
#: Gap between the latency figure's jobs: long enough that the workers are idle when each arrives.
GAP = 0.1
#: Seconds the idle pool is left alone after start-up before its memory is read.
SETTLE = 1.0
#: Bounds on waiting for a pool to start, for jobs to end, and for a pool to stop.
START_TIMEOUT, JOBS_TIMEOUT, STOP_TIMEOUT = 60.0, 60.0, 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def redis_server() -> Iterator[tuple[str, redis.Redis]]:
    """A throwaway redis-server (the bundled binary, no persistence) for one benchmark run."""
    port, folder = free_port(), Path(tempfile.mkdtemp(prefix="wq-bench-"))
    server = subprocess.Popen([str(embedded.server_binary()), "--port", str(port), "--bind", "127.0.0.1",
                               "--dir", str(folder), "--save", "", "--appendonly", "no"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    conn = redis.Redis(port=port)
    try:
        wait_until(_answers(conn), 5, "redis-server to answer", poll=0.05)
        yield f"redis://127.0.0.1:{port}/0", conn
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(folder, ignore_errors=True)


def _answers(conn: redis.Redis) -> Callable[[], bool]:
    def ping() -> bool:
        try:
            return bool(conn.ping())
        except redis.ConnectionError:
            return False

    return ping


def counters(conn: redis.Redis) -> tuple[int, int]:
    """Redis's commands processed and read events (one per request a client sends: its round trips)."""
    stats = conn.info("stats")
    return int(stats["total_commands_processed"]), int(stats["total_reads_processed"])


def cpu_seconds(conn: redis.Redis) -> tuple[float, float]:
    """CPU seconds used so far by this process's reaped children (a burst pool, its workers and their
    horses, once it has exited) and by Redis."""
    children, server = resource.getrusage(resource.RUSAGE_CHILDREN), conn.info("cpu")
    return children.ru_utime + children.ru_stime, float(server["used_cpu_user"]) + float(server["used_cpu_sys"])


def consumers(url: str, workers: int, burst: bool) -> dict[str, list[str]]:
    """Both sides' pool command lines, so every figure runs the two the same way: same queue, JSON, workers."""
    py, flag = sys.executable, ["--burst"] if burst else []
    return {
        OURS: [py, "consumer_main.py", "--workers", str(workers), "--queue", QUEUE, *flag],
        RQ: [str(Path(py).parent / "rq"), "worker-pool", "-n", str(workers), *flag, "-S", "json", "-u", url, QUEUE],
    }


def popen_options(url: str) -> dict[str, Any]:
    """Popen options of every consumer run: from the repo (RQ imports the catalogue from there), output dropped."""
    return {"cwd": ROOT, "env": dict(os.environ, REDIS_URL=url), "stdout": subprocess.DEVNULL,
            "stderr": subprocess.DEVNULL}  # fmt: skip


def enqueue(side: str, conn: redis.Redis, task: str, params: dict[str, Any], count: int = 1) -> list[str]:
    """Enqueue ``count`` calls of a catalogue task in one round trip, as each side's producer would: the job ids.

    Ours goes through workqueue's producer (batch, callbacks, counters); RQ's through a bare Queue.
    """
    if side == OURS:
        call = producer.TaskCall.build(task, params, retries=0)
        return [job.id for job in producer.enqueue(conn, [call] * count, QUEUE).jobs]
    q = Queue(QUEUE, connection=conn, serializer=JSONSerializer)
    path = task_def.get_task(task).path
    return [job.id for job in q.enqueue_many([Queue.prepare_data(path, kwargs=params) for _ in range(count)])]


def drain(conn: redis.Redis, url: str, jobs: int, argv: list[str]) -> tuple[float, ...]:
    """Enqueue ``jobs`` no-ops, run ``argv`` (a burst pool of 2) to empty the queue: jobs/s from the
    pool's launch to its exit and from the first job's start to the last one's end (as the jobs
    record them), commands and round trips per job, and CPU microseconds per job spent by the pool's
    processes and by Redis (the pool's start-up and status line included in all four)."""
    conn.flushall()
    q = Queue(QUEUE, connection=conn, serializer=JSONSerializer)
    ids = enqueue(OURS, conn, "primes", {"n": 0}, jobs)
    before, cpu_before = counters(conn), cpu_seconds(conn)
    started = time.monotonic()
    subprocess.run(argv, **popen_options(url), timeout=900, check=True)
    elapsed = time.monotonic() - started
    done = q.finished_job_registry.get_job_count(cleanup=False)
    if done != jobs:
        raise SystemExit(f"{argv[1]}: only {done} of {jobs} jobs finished")
    after, cpu_after = counters(conn), cpu_seconds(conn)
    ran = [job for job in Job.fetch_many(ids, connection=conn, serializer=JSONSerializer) if job]
    busy = (max(job.ended_at for job in ran) - min(job.started_at for job in ran)).total_seconds()
    return (
        jobs / elapsed,
        jobs / busy,
        (after[0] - before[0]) / jobs,
        (after[1] - before[1]) / jobs,
        1e6 * (cpu_after[0] - cpu_before[0]) / jobs,
        1e6 * (cpu_after[1] - cpu_before[1]) / jobs,
    )


def enqueue_rates(conn: redis.Redis, jobs: int) -> dict[str, tuple[float, float]]:
    """Jobs/s enqueued one call at a time and in bulk: workqueue's producer vs RQ's Queue."""
    conn.flushall()
    call = producer.TaskCall.build("primes", {"n": 0}, retries=0)
    q = Queue("bench-rq", connection=conn, serializer=JSONSerializer)

    def rate(fn) -> float:
        started = time.monotonic()
        fn()
        return jobs / (time.monotonic() - started)

    ours_one = rate(lambda: [producer.enqueue(conn, [call], QUEUE) for _ in range(jobs)])
    rq_one = rate(lambda: [q.enqueue(NOOP, kwargs={"n": 0}) for _ in range(jobs)])
    ours_bulk = rate(lambda: producer.enqueue(conn, [call] * jobs, QUEUE))
    rq_bulk = rate(lambda: q.enqueue_many([Queue.prepare_data(NOOP, kwargs={"n": 0}) for _ in range(jobs)]))
    return {"enqueue, one at a time (jobs/s)": (ours_one, rq_one), "enqueue, bulk (jobs/s)": (ours_bulk, rq_bulk)}


def wait_until(ready: Callable[[], bool], timeout: float, what: str, poll: float = 0.01) -> float:
    """Poll ``ready`` until it holds: the monotonic time it first did. A benchmark must not hang: bounded."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)
    return time.monotonic()


@contextmanager
def running(argv: list[str], url: str) -> Iterator[subprocess.Popen]:
    """A long-running pool, stopped however the block ends, with every process it started."""
    pool = subprocess.Popen(argv, **popen_options(url))
    try:
        yield pool
    finally:
        stop(pool)


def stop(pool: subprocess.Popen) -> None:
    """SIGTERM: a warm stop for both pools. Whatever outlives the bound (pool, workers, schedulers) is killed."""
    try:
        family = psutil.Process(pool.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    pool.send_signal(signal.SIGTERM)
    try:
        pool.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pool.kill()
        pool.wait()
    _, alive = psutil.wait_procs(family, timeout=STOP_TIMEOUT)
    for process in alive:
        process.kill()
    psutil.wait_procs(alive, timeout=STOP_TIMEOUT)


def ended(side: str, conn: redis.Redis, ids: list[str], timeout: float = JOBS_TIMEOUT) -> list[Job]:
    """The jobs, once all have finished; a failed one makes the figure meaningless, so the run stops."""

    def done() -> bool:
        statuses = [job.get_status(refresh=False) if job else None
                    for job in Job.fetch_many(ids, connection=conn, serializer=JSONSerializer)]  # fmt: skip
        if JobStatus.FAILED in statuses:
            raise SystemExit(f"{side}: {statuses.count(JobStatus.FAILED)} of {len(ids)} jobs failed")
        return all(status == JobStatus.FINISHED for status in statuses)

    wait_until(done, timeout, f"{side}'s {len(ids)} jobs to finish", poll=0.1)
    return [job for job in Job.fetch_many(ids, connection=conn, serializer=JSONSerializer) if job]


def idle_rss_mb(pool_pid: int) -> float:
    """Mean resident memory (VmRSS) of the pool's worker processes, its children: what each idle worker holds.

    RSS counts the pages a forked worker still shares with its pool, so the workers' sum overstates the total.
    """
    workers = psutil.Process(pool_pid).children()
    if not workers:
        raise SystemExit(f"pool {pool_pid} has no worker processes")
    return statistics.fmean(worker.memory_info().rss for worker in workers) / 2**20


def start_latencies(side: str, conn: redis.Redis, samples: int) -> list[float]:
    """Milliseconds from enqueued_at to started_at, as RQ stores them, of no-ops sent GAP apart to idle workers."""
    ids: list[str] = []
    for _ in range(samples):
        ids += enqueue(side, conn, "primes", {"n": 0})
        time.sleep(GAP)
    return [(job.started_at - job.enqueued_at).total_seconds() * 1000 for job in ended(side, conn, ids)]


def nap_wall(side: str, conn: redis.Redis) -> float:
    """Seconds from just before NAPS sleeps are enqueued (in bulk) to the last one's ended_at."""
    begun = now()
    jobs = ended(side, conn, enqueue(side, conn, "sleep", {"seconds": NAP}, NAPS))
    return (max(job.ended_at for job in jobs) - begun).total_seconds()


def pool_figures(side: str, conn: redis.Redis, url: str, samples: int) -> dict[str, float]:
    """Start a pool of POOL workers on an empty Redis; time its start-up, read its idle memory, then run jobs."""
    conn.flushall()
    argv = consumers(url, POOL, burst=False)[side]
    launched = time.monotonic()
    with running(argv, url) as pool:
        registered = wait_until(lambda: Worker.count(connection=conn) >= POOL, START_TIMEOUT,
                                f"{side}'s {POOL} workers to register")  # fmt: skip
        time.sleep(SETTLE)
        rss = idle_rss_mb(pool.pid)
        latencies = statistics.quantiles(start_latencies(side, conn, samples), n=100, method="inclusive")
        wall = nap_wall(side, conn)
    return {
        "enqueue->start p50, idle workers (ms)": latencies[49],
        "enqueue->start p99, idle workers (ms)": latencies[98],
        f"{NAPS} x sleep({NAP}), {POOL} workers (s, ideal {NAPS / POOL * NAP:.1f})": wall,
        f"start-up, {POOL} workers registered (s)": registered - launched,
        "idle RSS per worker (MB)": rss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000,
                        help="no-op jobs per enqueue figure and per drain by RQ; the latency figures send a "
                        f"fifth (at least 20), {GAP} s apart")  # fmt: skip
    parser.add_argument(
        "--drain-jobs",
        type=int,
        default=10_000,
        help="no-op jobs our pool drains (RQ's forking pool, at some 20 jobs/s, drains --jobs)",
    )
    parser.add_argument(
        "--drains",
        type=int,
        default=3,
        help="drains by our pool, of which each drain figure is the median (RQ's drains once)",
    )
    args = parser.parse_args()
    with redis_server() as (url, conn):
        burst = consumers(url, 2, burst=True)
        ours_each = [drain(conn, url, args.drain_jobs, burst[OURS]) for _ in range(max(1, args.drains))]
        ours = tuple(statistics.median(figures) for figures in zip(*ours_each, strict=True))
        bare = drain(conn, url, args.jobs, burst[RQ])
        rows = {"drain, 2 workers, launch to exit (jobs/s)": (ours[0], bare[0]),
                "drain, 2 workers, first start to last end": (ours[1], bare[1]),
                "Redis commands per job (drain)": (ours[2], bare[2]),
                "Redis round trips per job (drain)": (ours[3], bare[3]),
                "consumer CPU per job (drain, us)": (ours[4], bare[4]),
                "Redis CPU per job (drain, us)": (ours[5], bare[5])}  # fmt: skip
        rows.update(enqueue_rates(conn, args.jobs))
        samples = max(20, args.jobs // 5)
        ours_pool = pool_figures(OURS, conn, url, samples)
        bare_pool = pool_figures(RQ, conn, url, samples)
        rows.update({name: (ours_pool[name], bare_pool[name]) for name in ours_pool})
    print(
        f"workqueue vs bare RQ {rq.__version__} worker-pool, one Redis, {os.cpu_count()} cores; drains of "
        f"{args.drain_jobs} jobs (ours) and {args.jobs} (RQ's), enqueue figures of {args.jobs} jobs"
    )
    print(f"{'figure':<46}{'workqueue':>12}{'RQ':>12}{'ratio':>8}")
    for name, (a, b) in rows.items():
        digits = 2 if max(abs(a), abs(b)) < 10 else 1
        print(f"{name:<46}{a:>12.{digits}f}{b:>12.{digits}f}{a / b:>8.2f}")
    print("ratio = workqueue / RQ: above 1 is better for rates, worse for commands, times and memory")
    print(
        f"our {len(ours_each)} drains, launch to exit (jobs/s): "
        + ", ".join(f"{figures[0]:.1f}" for figures in ours_each)
        + " (the median above)"
    )


if __name__ == "__main__":
    main()
