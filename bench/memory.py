"""Memory per job: bytes of Redis each finished job holds, and the producer's peak RSS, beside bare RQ.

    .venv/bin/python bench/memory.py [--quick]      (make bench runs it; --quick: 10,000 jobs, not 100,000)

On a throwaway redis-server (Debian's, no persistence): ``producer_main.py --task factorise --param n=12
--count N`` enqueues N jobs (its peak RSS read by ``wait4``, as is that of ``--from-file`` with the same N
lines), a 2-worker consumer runs them all, and INFO memory's ``used_memory`` after minus before, over N,
is the Redis each finished job holds (its hash, its result, its share of the registries, batch and
statistics keys), at default settings (results kept a day). The same for bare RQ: ``Queue.enqueue_many``
of the same body (N jobs in one call, its peak RSS) and RQ's ``SimpleWorker`` in burst mode over a
sample of them (RQ drains ~25 jobs/s with a forking worker). Nothing asserts the figures.

Then, with our N finished jobs and the N of ``--from-file`` left queued in that Redis, the dashboard
(``dashboard_main.py`` on its default server) is timed at that scale: each data endpoint its pages
read (live work, history, /metrics, rq-dashboard's queues, workers and job lists, one job) asked
DASHBOARD_ASKS times over one kept-alive connection, the median and the slowest in ms.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from bench.run import SYSTEM_REDIS, free_port, redis_server, wait_until  # noqa: E402

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


#: Times each dashboard endpoint is asked for its figures.
DASHBOARD_ASKS = 20


def dashboard_endpoints(conn: redis.Redis) -> list[str]:
    """The data endpoints the dashboard's pages read, on the jobs this bench left in Redis (rq-dashboard's
    job lists 8 a page, as its pages ask)."""
    job_id = conn.zrange(f"rq:finished:{QUEUE}", 0, 0)[0].decode()
    rq_jobs = f"/rq/0/data/jobs/{QUEUE}"
    return [
        "/api/live", "/api/history", "/metrics", "/rq/0/data/queues.json", "/rq/0/data/workers.json",
        f"{rq_jobs}/queued/8/asc/1.json", f"{rq_jobs}/finished/8/dsc/1.json", f"/api/jobs/{job_id}",
    ]  # fmt: skip


def dashboard_times(url: str, conn: redis.Redis) -> dict[str, tuple[float, float]]:
    """Each data endpoint's median and slowest answer (ms) from the dashboard served on ``url``'s Redis."""
    port = free_port()
    argv = [PY, "dashboard_main.py", "--port", str(port), "--redis-url", url]
    server = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def ask(path: str) -> float:
        started = time.perf_counter()
        client.request("GET", path)
        response = client.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"the dashboard answered {path} with {response.status}")
        return 1000 * (time.perf_counter() - started)

    def answers() -> bool:
        try:
            ask("/health")
        except OSError:
            client.close()
            return False
        return True

    try:
        wait_until(answers, 60, "the dashboard to answer", poll=0.2)
        times = {}
        for path in dashboard_endpoints(conn):
            spans = [ask(path) for _ in range(DASHBOARD_ASKS)]
            times[path] = (statistics.median(spans), max(spans))
        return times
    finally:
        client.close()
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


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
        queued, finished = conn.llen(f"rq:queue:{QUEUE}"), conn.zcard(f"rq:finished:{QUEUE}")
        dashboard = dashboard_times(url, conn)
        theirs = bare_rq(url, conn, jobs)
    print(f"memory, {jobs:,} jobs (Redis at default settings: results kept a day)")
    print(f"  {'figure':<44} {'workqueue':>10} {'RQ':>10} {'ours/RQ':>8}")
    print(f"  {'Redis bytes per finished job':<44} {mine['bytes']:>10,.0f} {theirs['bytes']:>10,.0f} "
          f"{mine['bytes'] / theirs['bytes']:>8.2f}")  # fmt: skip
    print(f"  {'producer peak RSS, --count (MB)':<44} {mine['rss']:>10.1f} {theirs['rss']:>10.1f} "
          f"{mine['rss'] / theirs['rss']:>8.2f}")  # fmt: skip
    print(f"  {'producer peak RSS, --from-file (MB)':<44} {mine['rss_file']:>10.1f}")
    print(f"the dashboard with {finished:,} finished and {queued:,} queued jobs, each endpoint asked "
          f"{DASHBOARD_ASKS} times (ms)")  # fmt: skip
    print(f"  {'endpoint':<44} {'median':>10} {'slowest':>10}")
    for path, (median, slowest) in dashboard.items():
        print(f"  {path if len(path) <= 44 else path[:41] + '...':<44} {median:>10.1f} {slowest:>10.1f}")


if __name__ == "__main__":
    main()
