"""Group commit (``worker.commits``): a horse running several jobs at once sends the ends ready at
the same moment in one request, each under its own guard, each tried again whole while Redis
refuses writes. Real redis-server, real workers; counts and orders only, never timings."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

import pytest
import redis
from rq import Queue
from rq.job import Job

from tests import group_tasks
from tests.helpers import Processes, child_pids, cli_env, fetch, status, wait_for, workers
from tests.test_outages import break_persistence
from workqueue import guarded, producer
from workqueue.jobs import SERIALIZER, CatalogueJob
from workqueue.worker import commits

QUEUE = "queue_one"
NAP = group_tasks.TASKS[0]


def start(processes: Processes, conn: redis.Redis, redis_url: str, concurrency: int):
    consumer = processes.start(
        "consumer_main.py", "--workers", "1", "--queue", QUEUE, "--concurrency", str(concurrency),
        env=cli_env(WORKQUEUE_EXTRA_TASKS="tests.group_tasks", REDIS_URL=redis_url),
    )  # fmt: skip
    wait_for(lambda: [w for w in workers(conn) if w.pid in child_pids(consumer)], 20, "the worker")
    return consumer


def naps(conn: redis.Redis, count: int, at: float) -> list[Job]:
    """``count`` jobs that all end at the wall-clock time ``at``."""
    return producer.enqueue(conn, [producer.TaskCall(NAP, NAP.validate({"at": at}))] * count, QUEUE).jobs


def started_registry(conn: redis.Redis) -> str:
    return Queue(QUEUE, connection=conn).started_job_registry.key


def running(conn: redis.Redis, jobs: list[Job]) -> bool:
    return conn.zcard(started_registry(conn)) == len(jobs) and all(status(conn, job) == "started" for job in jobs)


def end_requests(conn: redis.Redis) -> int:
    """Requests since the slow log was reset that carried guarded writes (ends, alone or in groups)."""
    shas = {hashlib.sha1(text.encode()).hexdigest().encode() for text in (guarded._RUN, getattr(guarded, "_GROUP", ""))}
    entries = conn.slowlog_get(10_000)
    return sum(1 for entry in entries if entry["command"].split()[:2][-1] in shas)


@pytest.fixture
def logged(conn: redis.Redis) -> Callable[[], int]:
    """Every command in the slow log from now on (restored after): the requests the test counts."""
    before = conn.config_get("slowlog-*")
    conn.config_set("slowlog-log-slower-than", 0)
    conn.config_set("slowlog-max-len", 10_000)
    conn.slowlog_reset()
    yield lambda: end_requests(conn)
    conn.config_set("slowlog-log-slower-than", before["slowlog-log-slower-than"])
    conn.config_set("slowlog-max-len", before["slowlog-max-len"])


def test_ends_ready_together_go_to_redis_in_fewer_requests_than_jobs(conn, processes, redis_url, logged) -> None:
    start(processes, conn, redis_url, 10)
    jobs = naps(conn, 10, time.time() + 6)
    wait_for(lambda: running(conn, jobs), 30, "the ten jobs to run at once")
    wait_for(lambda: all(status(conn, job) == "finished" for job in jobs), 60, "the ten ends")
    for job in jobs:
        assert CatalogueJob.fetch(job.id, connection=conn, serializer=SERIALIZER).return_value()  # each whole
    assert conn.zcard(started_registry(conn)) == 0
    requests = logged()
    assert 1 <= requests < len(jobs)  # one request per end before group commit


def test_a_superseded_run_in_a_group_writes_nothing_and_its_neighbours_are_written(
    conn, processes, redis_url, logged
) -> None:
    start(processes, conn, redis_url, 6)
    at = time.time() + 6
    jobs = naps(conn, 6, at)
    wait_for(lambda: running(conn, jobs), 30, "the six jobs to run at once")
    victim, neighbours = jobs[0], jobs[1:]
    # Its run is taken from it just before the ends, as a sweep taking its worker for dead would.
    time.sleep(max(0.0, at - time.time() - 0.5))
    (member,) = [m for m in conn.zrange(started_registry(conn), 0, -1) if m.decode().startswith(f"{victim.id}:")]
    assert conn.zrem(started_registry(conn), member) == 1
    wait_for(lambda: all(status(conn, job) == "finished" for job in neighbours), 60, "the neighbours' ends")
    wait_for(lambda: fetch(conn, victim).meta.get("superseded"), 30, "the victim's run to end, superseded")
    found = CatalogueJob.fetch(victim.id, connection=conn, serializer=SERIALIZER)
    assert found.get_status().value == "started" and not found.results()
    assert conn.zscore(Queue(QUEUE, connection=conn).finished_job_registry.key, victim.id) is None
    # It ran to its end, or its worker's heartbeat found the job handed back and stopped it first.
    assert [n["outcome"] for n in found.meta["superseded"]] in (["finished"], ["stopped: the job had been handed back"])
    for job in neighbours:
        assert len(CatalogueJob.fetch(job.id, connection=conn, serializer=SERIALIZER).results()) == 1
    assert logged() < len(jobs)  # in groups


def test_ends_refused_while_redis_cannot_save_are_written_whole_once_it_can(conn, processes, redis_url) -> None:
    start(processes, conn, redis_url, 8)
    jobs = naps(conn, 8, time.time() + 5)
    wait_for(lambda: running(conn, jobs), 30, "the eight jobs to run at once")
    repair = break_persistence(conn)  # MISCONF: every write refused
    try:
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:  # the jobs end meanwhile: none written, not even in part
            assert conn.zcard(started_registry(conn)) == len(jobs)
            assert all(status(conn, job) == "started" for job in jobs)
            assert conn.zcard(Queue(QUEUE, connection=conn).finished_job_registry.key) == 0
            time.sleep(0.2)
    finally:
        repair()
    wait_for(lambda: all(status(conn, job) == "finished" for job in jobs), 60, "the ends once Redis saves again")
    assert conn.zcard(started_registry(conn)) == 0
    for job in jobs:
        found = CatalogueJob.fetch(job.id, connection=conn, serializer=SERIALIZER)
        assert len(found.results()) == 1 and found.return_value() is not None


def test_a_transaction_that_breaks_its_group_fails_alone_and_its_neighbours_are_written(conn) -> None:
    """In-process, no thread: the committer's send step with three transactions waiting, the middle
    one malformed (the script fails on it): the two others are still written, each on its own."""
    committer = commits.Committer()
    committer._client = conn
    no_guard = guarded.Guard("", "", [])
    ends = [
        commits._End(no_guard, [3, "SET", "k1", "one"]),
        commits._End(no_guard, ["not a count"]),
        commits._End(no_guard, [3, "SET", "k2", "two"]),
    ]
    committer._waiting.extend(ends)
    committer._send_waiting()
    assert conn.get("k1") == b"one" and conn.get("k2") == b"two"
    assert ends[0].error is None and ends[2].error is None and isinstance(ends[1].error, redis.ResponseError)
    assert committer.ends == 3 and committer.requests == 4  # the group, then each alone
    assert all(end.done.acquire(blocking=False) for end in ends)  # each thread answered
