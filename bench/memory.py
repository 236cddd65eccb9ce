"""Memory per job: bytes of Redis each finished job holds, and the producer's peak RSS, beside bare RQ.

    .venv/bin/python bench/memory.py [--quick]      (make bench runs it; --quick: 10,000 jobs, not 100,000)

On a throwaway redis-server (Debian's, no persistence): ``producer_main.py --task factorise --param n=12
--count N`` enqueues N jobs (its peak RSS read by ``wait4``, as is that of ``--from-file`` with the same N
lines), a 2-worker consumer runs them all, and INFO memory's ``used_memory`` after minus before, over N,
is the Redis each finished job holds (its hash, its result, its share of the registries, batch and
statistics keys), at default settings (results kept a day). The same for bare RQ: ``Queue.enqueue_many``
of the same body (N jobs in one call, its peak RSS) and RQ's ``SimpleWorker`` in burst mode over a
sample of them (RQ drains ~25 jobs/s with a forking worker). Nothing asserts the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from bench.run import SYSTEM_REDIS, redis_server, wait_until  # noqa: E402

PY = sys.executable
QUEUE = "memory"
#: Jobs bare RQ's SimpleWorker runs for its bytes per job (its per-job cost does not depend on N).
RQ_SAMPLE = 2_000

RQ_PRODUCER = """
import sys, redis
from rq import Queue
from rq.serializers import JSONSerializer
from task_def.maths import factorise
q = Queue("rq-memory", connection=redis.Redis.from_url(sys.argv[1]), serializer=JSONSerializer)
n = int(sys.argv[2])
q.enqueue_many([Queue.prepare_data(factorise, kwargs={"n": 12}, result_ttl=86400) for _ in range(n)])
"""

RQ_WORKER = """
import sys, redis
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer
conn = redis.Redis.from_url(sys.argv[1])
q = Queue("rq-memory", connection=conn, serializer=JSONSerializer)
SimpleWorker([q], connection=conn, serializer=JSONSerializer).work(burst=True, with_scheduler=False)
"""


def peak_rss_mb(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run ``argv`` to its end: its peak RSS in MB (``wait4``) and its output; exits if it failed."""
    child = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert child.stdout is not None
    out = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:3])} failed ({child.returncode}): {out.strip()[-500:]}")
    return usage.ru_maxrss / 1024, out


def used(conn: redis.Redis) -> int:
    return int(conn.info("memory")["used_memory"])


def ours(url: str, conn: redis.Redis, jobs: int, folder: Path) -> dict[str, float]:
    """Our producer's peak RSS (flags, then a file) and Redis bytes per finished job."""
    env = dict(os.environ, REDIS_URL=url)
    consumer = subprocess.Popen([PY, "consumer_main.py", "--workers", "2", "--queue", QUEUE, "--redis-url", url],
                                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_until(lambda: len(conn.smembers("rq:workers")) >= 2, 60, "the consumer's workers")
        time.sleep(1.0)
        before = used(conn)
        producer = [PY, "producer_main.py", "--queue", QUEUE, "--redis-url", url, "--quiet"]
        rss_flags, out = peak_rss_mb([*producer, "--task", "factorise", "--param", "n=12", "--count", str(jobs)], env)
        batch = out.split("batch ", 1)[1].split(":", 1)[0]
        wait_until(lambda: _done(conn, batch), 900, f"{jobs:,} jobs to finish", poll=0.5)
        time.sleep(1.0)
        per_job = (used(conn) - before) / jobs
        lines = folder / "jobs.jsonl"
        with lines.open("w") as f:
            f.writelines(json.dumps({"task": "factorise", "params": {"n": 12}}) + "\n" for _ in range(jobs))
        conn.delete(f"rq:queue:{QUEUE}")  # the consumer stops at once; the file's jobs need not run
        consumer.terminate()
        consumer.wait(60)
        rss_file, _ = peak_rss_mb([*producer, "--from-file", str(lines)], env)
    finally:
        if consumer.poll() is None:
            consumer.kill()
            consumer.wait()
    return {"bytes": per_job, "rss": rss_flags, "rss_file": rss_file}


def _done(conn: redis.Redis, batch: str) -> bool:
    return conn.hget(f"workqueue:batch:{batch}", "ended_at") is not None


def bare_rq(url: str, conn: redis.Redis, jobs: int) -> dict[str, float]:
    """Bare RQ: enqueue_many's peak RSS for ``jobs``, then bytes per finished job over RQ_SAMPLE."""
    conn.flushall()
    rss, _ = peak_rss_mb([PY, "-c", RQ_PRODUCER, url, str(jobs)])
    conn.flushall()
    time.sleep(0.5)
    before = used(conn)
    sample = min(RQ_SAMPLE, jobs)
    peak_rss_mb([PY, "-c", RQ_PRODUCER, url, str(sample)])
    peak_rss_mb([PY, "-c", RQ_WORKER, url])
    time.sleep(1.0)
    return {"bytes": (used(conn) - before) / sample, "rss": rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 jobs instead of 100,000")
    parser.add_argument("--jobs", type=int, default=None, help="how many jobs (default 100,000; --quick 10,000)")
    parser.add_argument("--redis-server", default=SYSTEM_REDIS, help="the redis-server binary to measure on")
    args = parser.parse_args()
    jobs = args.jobs or (10_000 if args.quick else 100_000)
    with redis_server(args.redis_server) as (url, conn), tempfile.TemporaryDirectory(prefix="wq-mem-") as tmp:
        mine = ours(url, conn, jobs, Path(tmp))
        theirs = bare_rq(url, conn, jobs)
    print(f"memory, {jobs:,} jobs (Redis at default settings: results kept a day)")
    print(f"  {'figure':<44} {'workqueue':>10} {'RQ':>10} {'ours/RQ':>8}")
    print(f"  {'Redis bytes per finished job':<44} {mine['bytes']:>10,.0f} {theirs['bytes']:>10,.0f} "
          f"{mine['bytes'] / theirs['bytes']:>8.2f}")  # fmt: skip
    print(f"  {'producer peak RSS, --count (MB)':<44} {mine['rss']:>10.1f} {theirs['rss']:>10.1f} "
          f"{mine['rss'] / theirs['rss']:>8.2f}")  # fmt: skip
    print(f"  {'producer peak RSS, --from-file (MB)':<44} {mine['rss_file']:>10.1f}")


if __name__ == "__main__":
    main()
