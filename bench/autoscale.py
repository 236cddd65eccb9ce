"""Autoscaling benchmark: a fixed pool of 10 against a pool scaling between 2 and 10.

    make bench            (or: .venv/bin/python bench/autoscale.py [--bursts 4] [--gap 15])

200 x sleep(1) arrive in bursts (4 bursts of 50, GAP seconds apart) on a throwaway redis-server.
For ``--workers 10`` and then ``--workers 2-10`` (with WORKQUEUE_SCALE_IN_IDLE=IDLE, so the pool
shrinks between bursts within the run), it prints side by side: the wall time from the first
burst to the last job's end, and the worker-seconds spent (live worker processes, sampled every
SAMPLE seconds, integrated over that time), with the busy share (the 200 job-seconds over them).
The two consumers run one after the other, never at once. Nothing is asserted: the figures are
what this machine measured in this run.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import psutil  # noqa: E402
import redis  # noqa: E402
from rq import Worker  # noqa: E402
from run import redis_server, wait_until  # noqa: E402

from workqueue import batches, producer  # noqa: E402

QUEUE = "bench-autoscale"
JOBS, SECONDS = 200, 1.0
#: Seconds between the live-worker samples, and the idle period the scaling pool is given.
SAMPLE, IDLE = 0.25, 3.0
START_TIMEOUT, RUN_TIMEOUT = 60.0, 600.0


def live_workers(conn: redis.Redis, consumer: subprocess.Popen) -> int:
    """The consumer's worker processes (its children that registered as workers)."""
    try:
        pids = {child.pid for child in psutil.Process(consumer.pid).children()}
    except psutil.NoSuchProcess:
        return 0
    return len([w for w in Worker.all(connection=conn) if w.pid in pids])


def run(workers: str, bursts: int, gap: float) -> dict[str, float]:
    """One consumer with ``--workers workers``, the bursts, and what it took."""
    with redis_server() as (url, conn):
        env = {**os.environ, "REDIS_URL": url, "WORKQUEUE_SCALE_IN_IDLE": str(IDLE)}
        consumer = subprocess.Popen(
            [sys.executable, str(ROOT / "consumer_main.py"), "--workers", workers, "--queue", QUEUE],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            low = int(workers.split("-")[0])
            wait_until(lambda: live_workers(conn, consumer) == low, START_TIMEOUT, f"{low} workers", poll=0.2)
            call = producer.TaskCall.build("sleep", {"seconds": SECONDS})
            per_burst = JOBS // bursts
            started = time.monotonic()
            next_burst, sent, ids = started, 0, []
            worker_seconds, peak, last = 0.0, 0, started
            while True:
                now = time.monotonic()
                if sent < bursts and now >= next_burst:
                    ids.append(producer.enqueue(conn, [call] * per_burst, QUEUE).batch_id)
                    sent, next_burst = sent + 1, next_burst + gap
                live = live_workers(conn, consumer)
                now = time.monotonic()
                worker_seconds += live * (now - last)
                last, peak = now, max(peak, live)
                if sent == bursts and all(batches.summary(conn, i).done for i in ids):
                    break
                if now - started > RUN_TIMEOUT:
                    raise TimeoutError(f"--workers {workers}: the bursts did not end in {RUN_TIMEOUT:.0f} s")
                time.sleep(SAMPLE)
            wall = time.monotonic() - started
        finally:
            consumer.send_signal(signal.SIGINT)
            try:
                consumer.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(consumer.pid, signal.SIGKILL)
                consumer.wait()
    return {"wall": wall, "worker_seconds": worker_seconds, "peak": peak, "busy": JOBS * SECONDS / worker_seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bursts", type=int, default=4, help="bursts the 200 jobs arrive in (default 4)")
    parser.add_argument("--gap", type=float, default=15.0, help="seconds between bursts (default 15)")
    args = parser.parse_args()
    print(
        f"autoscaling: {JOBS} × sleep({SECONDS:g}) in {args.bursts} bursts {args.gap:g} s apart; "
        f"the scaling pool stops a worker idle {IDLE:g} s"
    )
    fixed, scaling = run("10", args.bursts, args.gap), run("2-10", args.bursts, args.gap)
    print(f"{'':24}{'--workers 10':>16}{'--workers 2-10':>16}")
    for label, key, fmt in (
        ("wall time (s)", "wall", "{:.1f}"),
        ("worker-seconds", "worker_seconds", "{:.0f}"),
        ("busy share", "busy", "{:.0%}"),
        ("most workers at once", "peak", "{:.0f}"),
    ):
        print(f"{label:24}{fmt.format(fixed[key]):>16}{fmt.format(scaling[key]):>16}")


if __name__ == "__main__":
    main()
