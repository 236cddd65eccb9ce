"""Where workqueue's drain and latency figures go: the profiles behind bench/run.py's two hardest rows.

    .venv/bin/python bench/profile.py redis   [--jobs 10000] [--drains 3]
    .venv/bin/python bench/profile.py latency [--jobs 200] [--rate 20] [--runs 2]

``redis``: drains of N queued no-ops by ``consumer_main.py --workers 2`` (as bench/run.py's), each on a
fresh throwaway redis-server, with INFO commandstats reset before it: per job, each command's calls and
the microseconds Redis spent in it (a script's own commands are counted apart and also inside its
EVALSHA), and Redis's whole CPU per job. What the scripts spend beyond the commands they run is Lua's
own (arguments and replies crossing into Lua and back).

``latency``: on a pool of 10 idle slots, N no-ops sent one by one at ``--rate`` a second (bench/run.py's
latency figure), each split in two: the ``workqueue.enqueue`` call itself, and from its return to the
job's start. Quantiles in milliseconds. Nothing asserts the figures.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from rq import Worker  # noqa: E402

from bench import run  # noqa: E402

#: Commands listed apart only when they cost at least this much per job (us); the rest are summed.
SHOWN_USEC = 0.05


def redis_profile(jobs: int, drains: int) -> None:
    """Print, per drain, each command's calls and Redis's time per job, and Redis's CPU per job."""
    for number in range(1, drains + 1):
        with run.redis_server() as (url, conn):
            side = run.sides(url, conn)[run.OURS]
            side.send_all(range(jobs))
            conn.config_resetstat()
            cpu_before = _redis_cpu(conn)
            with run.stamp_folder() as folder, run.running(side.drain_argv, url, folder):
                stamps = run.stamped(folder, jobs, f"a drain of {jobs} jobs")
            cpu = _redis_cpu(conn) - cpu_before
            stats = conn.info("commandstats")
        first, last = min(s for s, _ in stamps.values()), max(e for _, e in stamps.values())
        print(f"drain {number} of {jobs} jobs: {jobs / (last - first):,.0f} jobs/s, "
              f"Redis CPU {1e6 * cpu / jobs:.1f} us a job")  # fmt: skip
        print(f"  {'command':<20} {'calls/job':>10} {'us/job':>8} {'us/call':>8}")
        rest = 0.0
        for name, entry in sorted(stats.items(), key=lambda item: -item[1]["usec"]):
            per_job = entry["usec"] / jobs
            if per_job < SHOWN_USEC:
                rest += per_job
                continue
            print(f"  {name.removeprefix('cmdstat_'):<20} {entry['calls'] / jobs:>10.2f} {per_job:>8.2f} "
                  f"{entry['usec_per_call']:>8.2f}")  # fmt: skip
        print(f"  {'(the others)':<20} {'':>10} {rest:>8.2f}")
        inside = sum(e["usec"] for n, e in stats.items() if n not in ("cmdstat_evalsha", "cmdstat_eval")) / jobs
        scripts = sum(e["usec"] for n, e in stats.items() if n in ("cmdstat_evalsha", "cmdstat_eval")) / jobs
        print(f"  scripts {scripts:.1f} us a job, every command they or clients ran {inside:.1f}")


def _redis_cpu(conn: redis.Redis) -> float:
    cpu = conn.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def latency_profile(jobs: int, rate: float, runs: int) -> None:
    """Print, per run, quantiles of the API call, of its return to the job's start, and of the whole."""
    with run.redis_server() as (url, conn):
        side = run.sides(url, conn)[run.OURS]
        for number in range(1, runs + 1):
            conn.flushall()
            side.send(0, 0.0)
            with run.stamp_folder() as folder, run.running(side.pool_argv, url, folder):
                run.stamped(folder, 1, "the pool to start")
                run.wait_until(lambda: Worker.count(connection=conn) >= run.POOL, run.START_TIMEOUT,
                               f"{run.POOL} workers to register")  # fmt: skip
                time.sleep(run.SETTLE)
                sent, back = {}, {}
                begun = time.monotonic()
                for tag in range(1, jobs + 1):
                    time.sleep(max(0.0, begun + (tag - 1) / rate - time.monotonic()))
                    sent[tag] = time.time()
                    side.send(tag, 0.0)
                    back[tag] = time.time()
                stamps = run.stamped(folder, jobs + 1, f"{jobs} latency jobs")
            print(f"run {number}: {jobs} jobs at {rate:g}/s on {run.POOL} idle slots (ms)")
            for name, spans in (
                ("the API call", [back[t] - sent[t] for t in sent]),
                ("its return to the start", [stamps[t][0] - back[t] for t in sent]),
                ("the call to the start", [stamps[t][0] - sent[t] for t in sent]),
            ):
                cuts = statistics.quantiles([1000 * s for s in spans], n=100, method="inclusive")
                print(f"  {name:<24} p50 {cuts[49]:5.2f}  p90 {cuts[89]:5.2f}  p99 {cuts[98]:5.2f}  "
                      f"max {1000 * max(spans):5.2f}")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="profile", required=True)
    redis_parser = sub.add_parser("redis", help="Redis's commands and CPU per job in drains")
    redis_parser.add_argument("--jobs", type=int, default=10_000, help="no-op jobs per drain")
    redis_parser.add_argument("--drains", type=int, default=3, help="drains, each printed")
    latency_parser = sub.add_parser("latency", help="the enqueue->start latency split in two")
    latency_parser.add_argument("--jobs", type=int, default=200, help="jobs per run")
    latency_parser.add_argument("--rate", type=float, default=20.0, help="jobs sent a second")
    latency_parser.add_argument("--runs", type=int, default=2, help="runs, each printed")
    args = parser.parse_args(argv)
    if args.profile == "redis":
        redis_profile(args.jobs, args.drains)
    else:
        latency_profile(args.jobs, args.rate, args.runs)


if __name__ == "__main__":
    main()
