"""An idle worker's wait for a job and its claim are one request (``job_steps.claim_many(wait=)``): a
BLMOVE, then the claim script, which Redis runs as soon as the BLMOVE brings a job. The job is
started as any claimed job is, stamped when the claim ran; a stop that cuts the wait ends it at once
and gives back a job the claim started meanwhile."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from rq.exceptions import DequeueTimeout
from rq.utils import utcparse

from workqueue import producer
from workqueue.worker import job_steps
from workqueue.worker.catalogue_worker import CatalogueWorker

QUEUE = "idle-claim"


class _Stop(Exception):
    """What a stop's signal handler raises in the worker (RQ's StopRequested, for an idle worker)."""


def new_worker(conn: redis.Redis) -> CatalogueWorker:
    conn.flushdb()
    worker = CatalogueWorker([QUEUE], connection=conn, name="idle-claim-worker")
    worker.register_birth()
    worker.set_state("idle")
    job_steps.prepare(conn)  # its scripts loaded, as a worker loads them as it starts
    return worker


def enqueue(conn: redis.Redis) -> str:
    return producer.enqueue(conn, [producer.TaskCall.build("primes", {"n": 0}, retries=0)], QUEUE).jobs[0].id


@contextmanager
def stop_after(seconds: float, first: Callable[[], Any] = lambda: None) -> Iterator[None]:
    """A stop raised in this (the main) thread ``seconds`` from now, by a signal handler, after ``first()``."""

    def handler(signum: int, frame: Any) -> None:
        first()
        raise _Stop()

    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_a_job_arriving_during_the_wait_is_claimed_in_it_and_stamped_when_it_started(conn, redis_url) -> None:
    worker = new_worker(conn)
    other = redis.Redis.from_url(redis_url)
    arrived: list[str] = []
    later = threading.Timer(0.5, lambda: arrived.append(enqueue(other)))
    later.start()
    try:
        claimed = job_steps.claim_many(worker, worker.queues, 1, wait=30)
    finally:
        later.cancel()
        later.join()
    assert [one.job.id for one in claimed] == arrived
    job_id, execution = arrived[0], claimed[0].execution
    assert execution is not None and worker.executions == {execution.id: execution} and worker.get_state() == "busy"
    fields = {k: v.decode() for k, v in conn.hgetall(f"rq:job:{job_id}").items() if k != b"data"}
    assert fields[b"status"] == "started" and fields[b"worker_name"] == worker.name
    # stamped by the claim as it ran (Redis's clock), not when the worker sent its request: after the enqueue
    assert utcparse(fields[b"started_at"]) >= utcparse(fields[b"enqueued_at"])
    assert abs(utcparse(fields[b"started_at"]).timestamp() - conn.time()[0]) < 60
    assert conn.zrange(f"rq:wip:{QUEUE}", 0, -1) == [f"{job_id}:{execution.id}".encode()]
    assert conn.lrange(f"rq:queue:{QUEUE}:intermediate", 0, -1) == []


def test_an_empty_wait_claims_nothing_and_leaves_the_worker_idle(conn) -> None:
    worker = new_worker(conn)
    assert job_steps.claim_many(worker, worker.queues, 1, wait=0.2) == []
    assert worker.get_state() == "idle" and worker.executions == {}
    enqueue(conn)  # the connection answers in order still: the next claim finds the job
    assert [one.job is not None for one in job_steps.claim_many(worker, worker.queues, 1)] == [True]


def test_a_wait_shorter_than_a_millisecond_still_ends(conn) -> None:
    # Redis 6 (the embedded one, these tests' own) reads a BLMOVE timeout under 1 ms as 0, "for ever":
    # the last slice of an idle worker's wait can be that short
    worker = new_worker(conn)
    for wait in (0.0005, 0.00002):
        assert job_steps.claim_many(worker, worker.queues, 1, wait=wait) == []
    assert worker.get_state() == "idle"


def test_an_idle_worker_looks_at_its_queues_once_per_wait(conn, monkeypatch) -> None:
    # Each slice of the wait is a BLMOVE and the claim behind it, which looks at every queue as the
    # wait ends: the next slice starts with no claim of its own (only the wait's first does).
    worker = new_worker(conn)
    claims: list[float | None] = []  # each claim's wait (None: a claim without one)
    real = job_steps.claim_many

    def counted(*args: Any, **kwargs: Any) -> Any:
        claims.append(kwargs.get("wait"))
        return real(*args, **kwargs)

    monkeypatch.setattr(job_steps, "claim_many", counted)
    worker.idle_look_gap = 0.5
    with pytest.raises(DequeueTimeout):
        worker._wait_and_claim(1.6)  # three slices of IDLE_LOOK_GAP (0.5 s here) and a shorter one
    assert claims[0] is None and len(claims) >= 4, claims
    assert all(wait is not None for wait in claims[1:]), claims


def test_a_stop_during_the_wait_ends_it_at_once(conn) -> None:
    worker = new_worker(conn)
    started = time.monotonic()
    with stop_after(0.3), pytest.raises(_Stop):
        worker._claim(wait=60)
    assert time.monotonic() - started < 30  # CLIENT KILL ended the request, not its 60 s wait
    assert worker.executions == {} and worker.get_state() == "idle"
    job_id = enqueue(conn)  # the worker's connection still answers in order
    claimed = worker._claim()
    assert claimed is not None and claimed[0].id == job_id


def test_a_job_the_claim_started_as_a_stop_cut_the_wait_goes_back_to_the_front(conn, redis_url, caplog) -> None:
    worker = new_worker(conn)
    other = redis.Redis.from_url(redis_url)
    arrived: list[str] = []
    caplog.set_level(logging.INFO)
    # the job arrives, then the stop is raised: by then Redis has run the claim that took it
    with stop_after(0.3, lambda: arrived.append(enqueue(other))), pytest.raises(_Stop):
        worker._claim(wait=60)
    job_id = arrived[0]
    assert "giving back 1 job(s) claimed as it stopped" in caplog.text
    assert conn.lrange(f"rq:queue:{QUEUE}", 0, -1) == [job_id.encode()]  # queued again, once
    assert conn.hget(f"rq:job:{job_id}", "status") == b"queued"
    assert conn.zrange(f"rq:wip:{QUEUE}", 0, -1) == [] and worker.executions == {}
    assert conn.lrange(f"rq:queue:{QUEUE}:intermediate", 0, -1) == []


def test_a_claim_answered_late_gives_its_job_back_unrun(conn, redis_url, monkeypatch, caplog) -> None:
    # A claim answered after the worker's heartbeats could have lapsed (a cut link): the sweep may have
    # handed the job to another worker meanwhile, so it is given back (guarded), never run here.
    worker = new_worker(conn)
    job_id = enqueue(conn)
    monkeypatch.setattr(job_steps, "LATE_CLAIM", 0.5)
    caplog.set_level(logging.INFO)
    redis.Redis.from_url(redis_url).execute_command("CLIENT", "PAUSE", 1500, "ALL")  # its answer comes 1.5 s late
    assert worker._claim() is None
    assert "giving back its 1 job(s) unrun" in caplog.text
    assert conn.lrange(f"rq:queue:{QUEUE}", 0, -1) == [job_id.encode()]
    assert conn.hget(f"rq:job:{job_id}", "status") == b"queued"
    assert conn.zrange(f"rq:wip:{QUEUE}", 0, -1) == [] and worker.executions == {}
    assert worker.get_state() == "idle" and conn.hget(worker.key, "state") == b"idle"
