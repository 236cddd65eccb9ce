"""Where a crawl lives between its pages, in Redis: the host ``task_def.crawl`` hands its links to.

A crawl is its start job and every page job it led to, all in the start job's batch. A page's links
become jobs of that batch (the batch's total grows in the same transaction, so ``--wait`` follows
the whole crawl), each URL once per crawl (a unique key ``crawl:<start job>:<normalised URL>``, held
for RESULT_TTL), and never more than ``max_pages`` over the crawl (a counter checked and raised in
that transaction). Each page's result is kept, for JSON lines (``results``).

Redis keys, all expiring after RESULT_TTL:
- ``workqueue:crawl:<start job>:pages``: pages the crawl has enqueued, the start one included;
- ``workqueue:crawl:<start job>:robots:<origin hash>``: each site's robots.txt, fetched once;
- ``workqueue:batch:<batch>:results``: each page's result as JSON, at most MAX_RESULTS.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

import redis
from rq.job import Job

from workqueue import async_tasks, batches, producer, unique
from workqueue.errors import BadInput
from workqueue.replies import decoded
from workqueue.settings import RESULT_TTL

log = logging.getLogger(__name__)

PREFIX = "workqueue:crawl:"
#: Most page results kept per batch (a crawl's max_pages is at most 10,000).
MAX_RESULTS = 20_000
#: Where a page job's meta says which crawl it belongs to and how deep it is.
META = "crawl"


def pages_key(crawl_id: str) -> str:
    return f"{PREFIX}{crawl_id}:pages"


def results_key(batch_id: str) -> str:
    return f"{batches.PREFIX}{batch_id}:results"


def page_key(crawl_id: str, url: str) -> str:
    """The unique key of a crawl's page: one job per normalised URL per crawl."""
    return f"crawl:{crawl_id}:{url}"


class RedisCrawlHost:
    """``task_def.crawl``'s host on a worker: the running job's crawl, kept in Redis."""

    def _running_job(self) -> Job:
        job = async_tasks.current_job()
        if job is None:
            raise RuntimeError("a crawl page runs as a job")
        return job

    @staticmethod
    def _where(job: Job) -> tuple[str, int]:
        info = (job.meta or {}).get(META) or {}
        return str(info.get("id") or job.id), int(info.get("depth") or 0)

    def depth(self) -> int:
        return self._where(self._running_job())[1]

    def robots(self, origin: str) -> str | None:
        job = self._running_job()
        text = job.connection.get(self._robots_key(job, origin))
        return None if text is None else decoded(text)

    def keep_robots(self, origin: str, text: str) -> None:
        job = self._running_job()
        job.connection.set(self._robots_key(job, origin), text, ex=RESULT_TTL)

    def _robots_key(self, job: Job, origin: str) -> str:
        return f"{PREFIX}{self._where(job)[0]}:robots:{hashlib.sha256(origin.encode()).hexdigest()[:32]}"

    def follow(self, links: list[str]) -> int:
        """Enqueue the links not yet part of the crawl as its pages, one deeper, in the job's batch."""
        job = self._running_job()
        if not job.group_id:
            return 0
        crawl_id, depth = self._where(job)
        params = dict(job.kwargs)
        if depth == 0:
            self._hold_start(job, crawl_id, params["url"])
        calls = []
        for link in links:
            try:
                call = producer.TaskCall.build(
                    "crawl", {**params, "url": link}, unique_key=page_key(crawl_id, link), unique_for=RESULT_TTL
                )
            except BadInput:
                continue  # a link the task would refuse (too long, odd host): not a page of the crawl
            calls.append(replace(call, meta={META: {"id": crawl_id, "depth": depth + 1}}))
        if not calls:
            return 0
        cap = producer.Cap(pages_key(crawl_id), int(params["max_pages"]))
        submission = producer.enqueue(
            job.connection, calls, job.origin, batch_id=job.group_id, into_batch=True, cap=cap
        )
        return len(submission.jobs)

    @staticmethod
    def _hold_start(job: Job, crawl_id: str, url: str) -> None:
        """The start page is the crawl's first: it holds its URL's key and counts as one page."""
        with job.connection.pipeline(transaction=True) as pipe:
            pipe.set(unique.redis_key(page_key(crawl_id, url)), job.id, nx=True, ex=RESULT_TTL)
            pipe.set(pages_key(crawl_id), 1, nx=True, ex=RESULT_TTL)
            pipe.execute()

    def record(self, page: dict[str, Any]) -> None:
        job = self._running_job()
        if not job.group_id:
            return
        key = results_key(job.group_id)
        with job.connection.pipeline(transaction=True) as pipe:
            pipe.rpush(key, json.dumps({**page, "job": job.id}, default=str))
            pipe.ltrim(key, 0, MAX_RESULTS - 1)
            pipe.expire(key, RESULT_TTL)
            pipe.execute()


def results(connection: redis.Redis, batch_id: str) -> list[dict[str, Any]]:
    """Each crawled page's result in the batch, in the order they ended: url, depth, status, title,
    links, error (None, ``HTTP 404``, ``robots.txt``, or the fetch's error such as ``ConnectError``)."""
    return [json.loads(line) for line in connection.lrange(results_key(batch_id), 0, -1)]


@dataclass
class CrawlSummary:
    """What ``--wait`` says at a crawl's end."""

    pages: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    domains: set[str] = field(default_factory=set)

    def describe(self, elapsed: float) -> str:
        errors = ", ".join(f"{kind} ×{n}" for kind, n in self.errors.most_common()) or "none"
        domains = ", ".join(sorted(self.domains)) or "none"
        return f"crawl: {self.pages} pages, errors: {errors}; domains: {domains}; in {elapsed:.1f} s"


def summarise(pages: list[dict[str, Any]]) -> CrawlSummary:
    summary = CrawlSummary()
    for page in pages:
        summary.pages += 1
        if page.get("error"):
            summary.errors[str(page["error"])] += 1
        host = urlsplit(str(page.get("url", ""))).netloc
        if host:
            summary.domains.add(host)
    return summary
