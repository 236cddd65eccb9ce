"""Side-by-side benchmark: workqueue beside bare RQ, Dramatiq and Huey, in one run, on one Redis.

    make bench                 (or: .venv/bin/python bench/run.py [--quick])
    make bench BENCH_QUICK=1   smaller counts, about a minute

Every side runs the same job body (bench/peer_tasks.py: a no-op that timestamps its start and end
in a file, never in Redis) against the same dedicated redis-server (Debian's /usr/bin/redis-server,
started here on a free port, no persistence), one side after the other, never two at once. Figures,
the same for all four:

- drains: N queued no-ops emptied by a 2-process consumer (workqueue --workers 2, rq worker-pool -n 2,
  dramatiq -p 2 -t 8, huey_consumer -w 2 -k process): jobs/s from the first job's start to the last
  one's end (and from the consumer's launch), Redis commands (INFO commandstats: the commands a Lua
  script runs count too), round trips (reads) and CPU (INFO cpu) per job, and the consumer's own CPU
  per job (start-up and shutdown included); each the median of three drains;
- enqueue rates: each side's Python API called once per job, and its bulk call where it has one;
- on a pool of 10 execution slots (workqueue --workers 10, rq -n 10, dramatiq -p 2 -t 5,
  huey -w 10 -k process): start-up (launch to a queued job's start), idle memory (PSS of the pool's
  processes, per slot), latency from just before the enqueue API call to the job's start (200 jobs
  at 20/s to idle workers; p50 and p99) and the wall time of 40 sleep(0.5) jobs.

Each peer's figure is shown beside ours as a ratio, always ours / theirs. The figures are what this
machine measured in this run; nothing asserts them.
"""

from __future__ import annotations

import argparse
import importlib
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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WORKQUEUE_EXTRA_TASKS", "bench.peer_catalogue")  # before task_def is imported

import psutil  # noqa: E402
import redis  # noqa: E402
import rq  # noqa: E402
from rq import Queue, Worker  # noqa: E402
from rq.serializers import JSONSerializer  # noqa: E402

import workqueue  # noqa: E402
from bench import peer_tasks  # noqa: E402

OURS, RQ, DRAMATIQ, HUEY = "workqueue", "RQ", "Dramatiq", "Huey"
SIDES = (OURS, RQ, DRAMATIQ, HUEY)
PEERS = SIDES[1:]
QUEUE = "bench"
BODY = "bench.peer_tasks.stamp"  # the body's path, as RQ imports it
#: The Debian redis-server every figure runs against (the bundled one is a different build).
SYSTEM_REDIS = "/usr/bin/redis-server"
#: Execution slots of the long-running pool (start-up, memory, latency, sleeps).
POOL = 10
#: Seconds the idle pool is left alone after its first job before anything is measured.
SETTLE = 1.5
#: Bounds on waiting for a pool to start, for jobs to end, and for a pool to stop.
START_TIMEOUT, JOBS_TIMEOUT, STOP_TIMEOUT = 60.0, 900.0, 20.0
#: Commands the bench itself sends to read the counters, left out of them.
OWN_COMMANDS = {"info", "ping", "flushall", "client|setname", "client|setinfo"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def redis_server(binary: str = SYSTEM_REDIS) -> Iterator[tuple[str, redis.Redis]]:
    """A throwaway redis-server (no persistence, loopback, a free port) for one benchmark run."""
    if not os.access(binary, os.X_OK):
        raise SystemExit(f"no redis-server at {binary}: apt-get install redis-server (or pass --redis-server PATH)")
    port, folder = free_port(), Path(tempfile.mkdtemp(prefix="wq-bench-"))
    server = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
                               "--save", "", "--appendonly", "no"],
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


def wait_until(ready: Callable[[], bool], timeout: float, what: str, poll: float = 0.01) -> float:
    """Poll ``ready`` until it holds: the monotonic time it first did. A benchmark must not hang: bounded."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)
    return time.monotonic()


def counters(conn: redis.Redis) -> tuple[int, int, float]:
    """Redis's commands so far (INFO commandstats, a script's own commands included, the bench's left out),
    its read events (one per request a client sends: round trips) and its CPU seconds."""
    stats = conn.info("commandstats")
    commands = sum(int(entry["calls"]) for name, entry in stats.items()
                   if name.removeprefix("cmdstat_") not in OWN_COMMANDS)  # fmt: skip
    cpu = conn.info("cpu")
    reads = int(conn.info("stats")["total_reads_processed"])
    return commands, reads, float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def children_cpu() -> float:
    """CPU seconds used so far by this process's reaped children (a pool and its processes, once stopped)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return children.ru_utime + children.ru_stime


@dataclass
class Side:
    """One queue library as the bench drives it: its consumers' command lines and its enqueue API."""

    name: str
    drain_argv: list[str]
    pool_argv: list[str]
    #: One call of the side's enqueue API: (tag, seconds).
    send: Callable[[int, float], object]
    #: Its bulk enqueue, or None where it has none.
    send_bulk: Callable[[Sequence[int], float], object] | None
    #: Whether its workers register in Redis (RQ's worker registry).
    registers: bool = False

    def send_all(self, tags: Sequence[int], seconds: float = 0.0) -> None:
        """Queue ``tags`` as fast as the side allows: its bulk call, else one call each."""
        if self.send_bulk is not None:
            self.send_bulk(tags, seconds)
        else:
            for tag in tags:
                self.send(tag, seconds)


def sides(url: str, conn: redis.Redis) -> dict[str, Side]:
    """The four sides on Redis ``url`` (the peers' modules read REDIS_URL when imported)."""
    py, bindir = sys.executable, Path(sys.executable).parent
    os.environ["REDIS_URL"] = url
    q = Queue(QUEUE, connection=conn, serializer=JSONSerializer)

    def ours_one(tag: int, seconds: float) -> object:
        return workqueue.enqueue("bench_stamp", {"tag": tag, "seconds": seconds}, queue=QUEUE, redis_url=url)

    def ours_bulk(tags: Sequence[int], seconds: float) -> object:
        tasks = [("bench_stamp", {"tag": tag, "seconds": seconds}) for tag in tags]
        return workqueue.enqueue_many(tasks, queue=QUEUE, redis_url=url)

    def rq_bulk(tags: Sequence[int], seconds: float) -> object:
        return q.enqueue_many([Queue.prepare_data(BODY, kwargs={"tag": t, "seconds": seconds}) for t in tags])

    dramatiq_actor = importlib.import_module("bench.peer_dramatiq").bench_stamp
    huey_task = importlib.import_module("bench.peer_huey").bench_stamp
    rq_cli, huey_cli = str(bindir / "rq"), str(bindir / "huey_consumer")
    return {
        OURS: Side(OURS, [py, "consumer_main.py", "--workers", "2", "--queue", QUEUE],
                   [py, "consumer_main.py", "--workers", str(POOL), "--queue", QUEUE], ours_one, ours_bulk, True),
        RQ: Side(RQ, [rq_cli, "worker-pool", "-n", "2", "-S", "json", "-u", url, QUEUE],
                 [rq_cli, "worker-pool", "-n", str(POOL), "-S", "json", "-u", url, QUEUE],
                 lambda tag, s: q.enqueue(BODY, kwargs={"tag": tag, "seconds": s}), rq_bulk, True),
        DRAMATIQ: Side(DRAMATIQ, [str(bindir / "dramatiq"), "bench.peer_dramatiq", "-p", "2", "-t", "8"],
                       [str(bindir / "dramatiq"), "bench.peer_dramatiq", "-p", "2", "-t", str(POOL // 2)],
                       lambda tag, s: dramatiq_actor.send(tag=tag, seconds=s), None),
        HUEY: Side(HUEY, [huey_cli, "bench.peer_huey.huey", "-w", "2", "-k", "process"],
                   [huey_cli, "bench.peer_huey.huey", "-w", str(POOL), "-k", "process"],
                   lambda tag, s: huey_task(tag, s), None),
    }  # fmt: skip


@contextmanager
def running(argv: list[str], url: str, stamps: Path) -> Iterator[subprocess.Popen]:
    """A consumer, from the repo (every side imports the body from there), output dropped, stopped however the
    block ends, with every process it started."""
    env = dict(os.environ, REDIS_URL=url, PYTHONPATH=str(ROOT), **{peer_tasks.STAMPS_ENV: str(stamps)})
    pool = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield pool
    finally:
        stop(pool)


def stop(pool: subprocess.Popen) -> None:
    """SIGTERM: a warm stop for every side. Whatever outlives the bound (pool, workers, schedulers) is killed."""
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


@contextmanager
def stamp_folder() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="wq-bench-stamps-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def stamped(folder: Path, jobs: int, what: str) -> dict[int, tuple[float, float]]:
    """Wait (bounded) until ``jobs`` jobs have stamped in ``folder``: their stamps."""
    wait_until(lambda: peer_tasks.count(folder) >= jobs, JOBS_TIMEOUT, what, poll=0.02)
    return peer_tasks.read(folder)


def drain(side: Side, conn: redis.Redis, url: str, jobs: int) -> list[float]:
    """Queue ``jobs`` no-ops, then launch the side's 2-process consumer until all have run, and stop it:
    jobs/s from the first start to the last end and from the launch, then per job: commands, round
    trips, Redis CPU (us) and the consumer's CPU (us), the consumer's start-up and shutdown included."""
    conn.flushall()
    side.send_all(range(jobs))
    with stamp_folder() as folder:
        before, cpu_before = counters(conn), children_cpu()
        launched = time.time()
        with running(side.drain_argv, url, folder):
            stamps = stamped(folder, jobs, f"{side.name}'s drain of {jobs} jobs")
        after, cpu_after = counters(conn), children_cpu()
    first, last = min(s for s, _ in stamps.values()), max(e for _, e in stamps.values())
    return [
        jobs / (last - first),
        jobs / (last - launched),
        (after[0] - before[0]) / jobs,
        (after[1] - before[1]) / jobs,
        1e6 * (after[2] - before[2]) / jobs,
        1e6 * (cpu_after - cpu_before) / jobs,
    ]


DRAIN_ROWS = (
    "drain, first start to last end (jobs/s)",
    "drain, launch to last end (jobs/s)",
    "Redis commands per job (drain)",
    "Redis round trips per job (drain)",
    "Redis CPU per job (drain, us)",
    "consumer CPU per job (drain, us)",
)


def drains(side: Side, conn: redis.Redis, url: str, jobs: int, times: int) -> tuple[dict[str, float], list[float]]:
    """The drain figures, each the median of ``times`` drains, and each drain's first-start-to-last-end rate."""
    each = [drain(side, conn, url, jobs) for _ in range(max(1, times))]
    medians = [statistics.median(figures) for figures in zip(*each, strict=True)]
    return dict(zip(DRAIN_ROWS, medians, strict=True)), [figures[0] for figures in each]


def enqueue_rates(side: Side, conn: redis.Redis, jobs: int) -> dict[str, float | None]:
    """Jobs/s enqueued through the side's API, one call per job and in bulk (None: it has no bulk call)."""

    def rate(send: Callable[[], object]) -> float:
        conn.flushall()
        started = time.monotonic()
        send()
        return jobs / (time.monotonic() - started)

    one = rate(lambda: [side.send(tag, 0.0) for tag in range(jobs)])
    bulk = rate(lambda: side.send_all(range(jobs))) if side.send_bulk is not None else None
    return {"enqueue, one API call per job (jobs/s)": one, "enqueue, bulk call (jobs/s)": bulk}


def pool_pss_mb(pool_pid: int) -> float:
    """Proportional memory (PSS: shared pages split among their sharers) of the pool and all its processes."""
    family = [psutil.Process(pool_pid), *psutil.Process(pool_pid).children(recursive=True)]
    return sum(process.memory_full_info().pss for process in family) / 2**20


def pool_figures(side: Side, conn: redis.Redis, url: str, samples: int, gap: float,
                 naps: int, nap: float) -> dict[str, float]:  # fmt: skip
    """Launch the side's POOL-slot pool with one job queued: its start-up (launch to that job's start); then,
    idle, its memory; then ``samples`` no-ops sent ``gap`` apart (latency from just before each enqueue
    call to the job's start) and ``naps`` sleeps of ``nap`` s queued at once (wall time to the last end)."""
    conn.flushall()
    side.send(0, 0.0)
    with stamp_folder() as folder:
        launched = time.time()
        with running(side.pool_argv, url, folder) as pool:
            started = stamped(folder, 1, f"{side.name}'s pool to start")[0][0] - launched
            if side.registers:
                wait_until(lambda: Worker.count(connection=conn) >= POOL, START_TIMEOUT,
                           f"{side.name}'s {POOL} workers to register")  # fmt: skip
            time.sleep(SETTLE)
            memory = pool_pss_mb(pool.pid) / POOL
            sent: dict[int, float] = {}
            begun = time.monotonic()
            for tag in range(1, samples + 1):
                time.sleep(max(0.0, begun + (tag - 1) * gap - time.monotonic()))
                sent[tag] = time.time()
                side.send(tag, 0.0)
            stamps = stamped(folder, samples + 1, f"{side.name}'s {samples} latency jobs")
            latencies = [1000 * (stamps[tag][0] - sent[tag]) for tag in sent]
            tags = range(samples + 1, samples + 1 + naps)
            nap_begun = time.time()
            side.send_all(tags, nap)
            stamps = stamped(folder, samples + 1 + naps, f"{side.name}'s {naps} sleeps")
            wall = max(stamps[tag][1] for tag in tags) - nap_begun
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "enqueue->start p50, from the API call (ms)": cuts[49],
        "enqueue->start p99, from the API call (ms)": cuts[98],
        f"{naps} x sleep({nap:g}), {POOL} slots (s, ideal {naps / POOL * nap:.2f})": wall,
        f"start-up, {POOL} slots, launch to a first job (s)": started,
        "idle memory per slot, PSS (MB)": memory,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small counts (drains of 300, one each; 20 latency jobs; 20 x sleep(0.2)): ~1 minute",
    )
    parser.add_argument("--drain-jobs", type=int, default=10_000, help="no-op jobs per drain (RQ: --rq-drain-jobs)")
    parser.add_argument(
        "--rq-drain-jobs",
        type=int,
        default=1_000,
        help="no-op jobs per drain by bare RQ, whose pool forks a process per job (~20-50 jobs/s)",
    )
    parser.add_argument("--drains", type=int, default=3, help="drains per side; each drain figure is their median")
    parser.add_argument("--jobs", type=int, default=2_000, help="jobs per enqueue-rate figure")
    parser.add_argument("--latency-jobs", type=int, default=200, help="jobs of the latency figure")
    parser.add_argument("--rate", type=float, default=20.0, help="jobs/s of the latency figure")
    parser.add_argument("--naps", type=int, default=40, help="sleep jobs of the wall-time figure")
    parser.add_argument("--nap", type=float, default=0.5, help="seconds each of them sleeps")
    parser.add_argument("--redis-server", default=SYSTEM_REDIS, help="the redis-server binary to measure on")
    args = parser.parse_args(argv)
    if args.quick:
        args.drain_jobs, args.rq_drain_jobs, args.drains, args.jobs = 300, 100, 1, 100
        args.latency_jobs, args.naps, args.nap = 20, 20, 0.2
    return args


def measure(args: argparse.Namespace) -> tuple[dict[str, dict[str, float | None]], dict[str, list[float]]]:
    """Every figure of every side, one side after the other on one Redis: {row: {side: figure}}, and each
    side's drain rates."""
    rows: dict[str, dict[str, float | None]] = {}
    each_drain: dict[str, list[float]] = {}
    with redis_server(args.redis_server) as (url, conn):
        for name, side in sides(url, conn).items():
            jobs = args.rq_drain_jobs if name == RQ else args.drain_jobs
            figures: dict[str, float | None]
            figures, each_drain[name] = drains(side, conn, url, jobs, args.drains)  # type: ignore[assignment]
            figures.update(enqueue_rates(side, conn, args.jobs))
            figures.update(pool_figures(side, conn, url, args.latency_jobs, 1 / args.rate, args.naps, args.nap))
            for row, value in figures.items():
                rows.setdefault(row, {})[name] = value
    return rows, each_drain


def table(rows: dict[str, dict[str, float | None]]) -> list[str]:
    """The figures side by side, then ours / each peer's."""

    def cell(value: float | None, width: int, digits: int) -> str:
        return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"

    lines = [f"{'figure':<46}" + "".join(f"{s:>10}" for s in SIDES) + "".join(f"{'/' + p:>10}" for p in PEERS)]
    for name, values in rows.items():
        known = [abs(v) for v in values.values() if v is not None]
        digits = 2 if known and max(known) < 10 else 1
        ours = values.get(OURS)
        ratios = [ours / v if ours is not None and v else None for v in (values.get(p) for p in PEERS)]
        lines.append(f"{name:<46}" + "".join(cell(values.get(s), 10, digits) for s in SIDES)
                     + "".join(cell(r, 10, 2) for r in ratios))  # fmt: skip
    return lines


def main() -> None:
    args = parse_args()
    rows, each_drain = measure(args)
    versions = f"RQ {rq.__version__}, Dramatiq {_version('dramatiq')}, Huey {_version('huey')}"
    print(f"workqueue vs bare {versions}; one Redis ({args.redis_server}), {os.cpu_count()} cores;")
    print(f"drains of {args.drain_jobs} jobs (RQ: {args.rq_drain_jobs}), median of {args.drains}")
    print("\n".join(table(rows)))
    print("/Peer = workqueue / that peer: above 1 is better for rates, worse for commands, CPU, times and memory")
    for name, rates in each_drain.items():
        print(f"{name}'s drains, first start to last end (jobs/s): " + ", ".join(f"{r:.1f}" for r in rates))


def _version(module: str) -> str:
    return str(getattr(importlib.import_module(module), "__version__", "?"))


if __name__ == "__main__":
    main()
