"""Our consumer pool for the benches that measure one side only (limits.py, crawl.py): its command
line, a pool kept running for a block, and waiting for jobs to finish. bench/run.py has the
side-by-side machinery; this reuses its Redis, its stop and its waits."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from run import OURS, QUEUE, wait_until
from run import running as _running

#: Gap between latency samples: long enough that the workers are idle when each arrives.
GAP = 0.1
#: Bounds on waiting for a pool's first job and for jobs to end.
START_TIMEOUT, JOBS_TIMEOUT = 60.0, 60.0

__all__ = ["GAP", "JOBS_TIMEOUT", "QUEUE", "START_TIMEOUT", "consumers", "ended", "running"]


def consumers(url: str, workers: int, burst: bool) -> dict[str, list[str]]:
    """Our pool's command line (keyed by side, as bench/run.py keys them): ``workers`` on QUEUE."""
    del url  # the pool reads REDIS_URL, which running() sets
    return {OURS: [sys.executable, "consumer_main.py", "--workers", str(workers), "--queue", QUEUE,
                   *(["--burst"] if burst else [])]}  # fmt: skip


@contextmanager
def running(argv: list[str], url: str) -> Iterator[object]:
    """The pool kept running for the block (bench/run.py's, with a throwaway stamps folder)."""
    with tempfile.TemporaryDirectory(prefix="wq-bench-stamps-") as stamps, _running(argv, url, Path(stamps)) as pool:
        yield pool


def ended(side: str, conn: redis.Redis, ids: list[str], timeout: float = JOBS_TIMEOUT) -> list[Job]:
    """The jobs, once all have finished; a failed one makes the figure meaningless, so the run stops."""

    def done() -> bool:
        jobs = Job.fetch_many(ids, connection=conn, serializer=JSONSerializer)
        statuses = [job.get_status(refresh=False) if job else None for job in jobs]
        if JobStatus.FAILED in statuses:
            raise SystemExit(f"{side}: {statuses.count(JobStatus.FAILED)} of {len(ids)} jobs failed")
        return all(status == JobStatus.FINISHED for status in statuses)

    wait_until(done, timeout, f"{side}'s {len(ids)} jobs to finish", poll=0.1)
    return [job for job in Job.fetch_many(ids, connection=conn, serializer=JSONSerializer) if job]
