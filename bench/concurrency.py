"""Concurrency inside a worker: I/O-bound scrapes, one at a time per worker against several.

    .venv/bin/python bench/concurrency.py [--jobs 1000] [--workers 10] [--delay 0.2] [--levels 1,10] [--quick]

Serves a local page that answers after ``--delay`` seconds (loopback, which the scrape task's
network policy allows by default), enqueues ``--jobs`` ``scrape``s of it, and drains them with a
pool of ``--workers`` run with each ``--concurrency`` of ``--levels``. Prints per level the wall
time (from releasing the jobs to ready workers to the last job's end), jobs per second, the most
requests the page had in flight at once, and the peak memory of a worker (its process and its
horse's, PSS where readable, else RSS, sampled every 0.5 s), the CPU the workers and their horses
spent per job from the release on (user and system, from the same samples), with each level's ratio
to the first.
``--quick`` (or BENCH_QUICK=1): 200 jobs. The figures are what this machine measured in this run;
nothing asserts them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
from rq import Queue

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from pool import QUEUE, START_TIMEOUT, ended, running  # noqa: E402  (bench/pool.py)
from run import redis_server, wait_until  # noqa: E402

from workqueue import control, pausing, producer  # noqa: E402

_BODY = b"<html><head><title>slow page</title></head><body><a href='/'>home</a></body></html>"
_RESPONSE = (
    b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(_BODY)
    + _BODY
)


class SlowPage:
    """One page that answers each request ``delay`` seconds after it arrived, and counts the requests
    in flight at once. One thread runs an asyncio loop for every connection: a real site's CPU is not
    on our machine, so the page must cost this one as little as it can (a thread per connection, as
    http.server does, cost about a third of a millisecond of CPU per request, taken from the two cores
    the scrapes share). Each connection carries one request and is closed after its answer (HTTP/1.0,
    as http.server answered), so every scrape still connects."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.in_flight = self.most_in_flight = 0
        self.loop = asyncio.new_event_loop()
        self.server = self.loop.run_until_complete(
            self.loop.create_server(lambda: _Answer(self), "127.0.0.1", 0, backlog=1024)
        )  # the default backlog would make a burst of connections wait for SYN retries
        self.port = self.server.sockets[0].getsockname()[1]
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/page"

    def close(self) -> None:
        """Stop the loop and close the listening socket (from the thread that made the page)."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.server.close()
        self.loop.run_until_complete(self.server.wait_closed())
        self.loop.close()


class _Answer(asyncio.Protocol):
    """One connection: its request read up to the blank line, answered ``delay`` seconds later."""

    def __init__(self, page: SlowPage) -> None:
        self.page = page
        self.head = b""
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None  # set while the request waits for its answer
        self.asked = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.asked:
            return
        self.head += data
        if b"\r\n\r\n" not in self.head:
            return
        self.asked = True
        page = self.page
        page.in_flight += 1  # only the loop's thread touches the counts
        page.most_in_flight = max(page.most_in_flight, page.in_flight)
        self.timer = page.loop.call_later(page.delay, self.answer)

    def answer(self) -> None:
        self.page.in_flight -= 1
        self.timer = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_RESPONSE)
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:  # the client gave up first
            self.timer.cancel()
            self.timer = None
            self.page.in_flight -= 1
        self.transport = None


@contextmanager
def serving(delay: float) -> Iterator[SlowPage]:
    page = SlowPage(delay)
    page.thread.start()
    try:
        yield page
    finally:
        page.close()


class MemorySampler(threading.Thread):
    """Samples, every ``gap`` seconds, each worker of the pool ``pid`` (its children) with its own
    children (the horse): the peak of their summed PSS (RSS where PSS is unreadable), per worker.
    The caller takes one more sample once the jobs have ended (a horse's memory grows as it runs:
    its peak is at the end, or near it). Sampling is not free, and its CPU is taken from the scrapes
    it measures: the kernel walks a process's page tables to sum its PSS (~0.7 ms per process here,
    20 processes a sample), and psutil reads every process's parent to find children, so one scan
    of the process table per sample (not one per worker) and a sample every half second."""

    def __init__(self, pid: int, gap: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pid, self.gap = pid, gap
        self.peaks: dict[int, int] = {}
        #: Each process's CPU seconds (user and system) when last sampled, and at ``mark_start``.
        self.cpu: dict[int, float] = {}
        self.cpu_at_start: dict[int, float] = {}
        self.kind = "PSS"
        self.done = threading.Event()

    def _memory(self, process: psutil.Process) -> int:
        try:
            if self.kind == "PSS":
                return process.memory_full_info().pss
            return process.memory_info().rss
        except psutil.AccessDenied:
            self.kind = "RSS"
            return process.memory_info().rss

    def run(self) -> None:
        while not self.done.wait(self.gap):
            self.sample()

    def mark_start(self) -> None:
        """Sample now: CPU spent so far (starting up, waiting) is not counted in ``cpu_seconds``."""
        self.sample()
        self.cpu_at_start = dict(self.cpu)

    def cpu_seconds(self) -> float:
        """CPU the workers and their horses spent since ``mark_start`` (up to the last sample)."""
        return sum(seconds - self.cpu_at_start.get(pid, 0.0) for pid, seconds in self.cpu.items())

    def sample(self) -> None:
        """Each worker's memory now, its peak kept."""
        try:
            tree = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return
        parents: dict[int, int] = {}
        for process in tree:
            try:
                parents[process.pid] = process.ppid()
            except psutil.NoSuchProcess:
                continue
        totals: dict[int, int] = {}
        for process in tree:
            worker = process.pid  # the worker this process counts for: itself or an ancestor
            while worker in parents and parents[worker] != self.pid:
                worker = parents[worker]
            if worker not in parents:
                continue
            try:
                totals[worker] = totals.get(worker, 0) + self._memory(process)
                times = process.cpu_times()
                self.cpu[process.pid] = times.user + times.system
            except psutil.NoSuchProcess:
                continue
        for worker, total in totals.items():
            self.peaks[worker] = max(self.peaks.get(worker, 0), total)


def drain(url: str, page: SlowPage, jobs: int, workers: int, concurrency: int, conn) -> dict[str, Any]:
    """Enqueue ``jobs`` scrapes on the paused queue, start a pool and wait for every worker to be
    ready, then resume the queue: the wall time runs from the resume to the last job's end, so
    neither the enqueueing nor the workers' start counts."""
    conn.flushdb()
    queue = Queue(QUEUE, connection=conn)
    pausing.pause(conn, QUEUE)
    call = producer.TaskCall.build("scrape", {"url": page.url, "timeout": 30})
    ids: list[str] = []
    for start in range(0, jobs, 500):
        ids += [job.id for job in producer.enqueue(conn, [call] * min(500, jobs - start), QUEUE).jobs]
    page.most_in_flight = 0
    argv = [sys.executable, "consumer_main.py", "--workers", str(workers), "--queue", QUEUE,
            "--concurrency", str(concurrency)]  # fmt: skip
    with running(argv, url) as pool:
        wait_until(lambda: len(control.live_workers(conn)) == workers, START_TIMEOUT, f"{workers} workers")
        sampler = MemorySampler(pool.pid)
        sampler.mark_start()
        sampler.start()
        try:
            resumed = time.time()
            pausing.resume(conn, QUEUE)
            # Counted, not fetched: reading every job ten times a second would cost more CPU than the
            # jobs themselves, and slow the page, which this process serves.
            registries = (queue.finished_job_registry.key, queue.failed_job_registry.key)
            wait_until(lambda: sum(conn.zcard(key) for key in registries) >= jobs, max(120.0, jobs * 0.3),
                       f"{jobs} jobs to end", poll=0.05)  # fmt: skip
            done = ended(f"--concurrency {concurrency}", conn, ids)
        finally:
            sampler.done.set()
            sampler.join(5)
            sampler.sample()
    wall = max(job.ended_at.timestamp() for job in done if job.ended_at) - resumed
    peaks = list(sampler.peaks.values()) or [0]
    return {
        "wall": wall,
        "rate": jobs / wall if wall > 0 else 0.0,
        "in_flight": page.most_in_flight,
        "peak_mb": max(peaks) / 1e6,
        "kind": sampler.kind,
        "cpu_ms": 1000 * sampler.cpu_seconds() / jobs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000, help="scrapes per level")
    parser.add_argument("--workers", type=int, default=10, help="worker processes (1 to 10)")
    parser.add_argument("--delay", type=float, default=0.2, help="seconds the page takes to answer")
    parser.add_argument("--levels", default="1,10", help="the --concurrency values to compare, comma-separated")
    parser.add_argument("--quick", action="store_true", help="200 jobs (also BENCH_QUICK=1)")
    args = parser.parse_args()
    jobs = 200 if args.quick or os.environ.get("BENCH_QUICK") else args.jobs
    levels = [int(level) for level in args.levels.split(",")]
    print(f"{jobs} scrapes of a local page answering after {args.delay:g} s, on {args.workers} workers")
    rows = []
    with redis_server() as (url, conn), serving(args.delay) as page:
        for level in levels:
            rows.append((level, drain(url, page, jobs, args.workers, level, conn)))
    print(
        f"{'concurrency':>11} {'wall s':>8} {'jobs/s':>8} {'ratio':>6} {'at once':>8} {'peak MB/worker':>15} "
        f"{'CPU ms/job':>10}"
    )
    base = rows[0][1]["rate"] or 1.0
    for level, row in rows:
        memory = f"{row['peak_mb']:.0f} ({row['kind']})"
        print(
            f"{level:>11} {row['wall']:>8.2f} {row['rate']:>8.1f} {row['rate'] / base:>5.1f}x "
            f"{row['in_flight']:>8.0f} {memory:>15} {row['cpu_ms']:>10.2f}"
        )


if __name__ == "__main__":
    main()
