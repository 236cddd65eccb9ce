"""Idle bells (``workqueue.bells``): an idle worker blocks on its first open queue's normal list, and
a job its BLMOVE does not watch (another of its queues, another priority level) rings it awake at
once, instead of waiting for its next look at all its queues. The looks are made rare here
(``WORKQUEUE_IDLE_LOOK_GAP``), so a job that started within the test's bound was woken by a bell."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from rq import Queue
from rq.exceptions import DequeueTimeout
from rq.job import Job

from tests.helpers import cli_env, run_cli, wait_for, workers
from workqueue import bells, pausing, producer, rq_compat, settings
from workqueue.jobs import SERIALIZER
from workqueue.worker import job_steps
from workqueue.worker.catalogue_worker import CatalogueWorker

#: Longer than any bound below: a job that ends within one was not found by a look.
LOOK_GAP = "300"


def _enqueue(conn: redis.Redis, queue: str, seconds: float = 0.05, **options: Any) -> str:
    call = producer.TaskCall.build("sleep", {"seconds": seconds}, **options)
    return producer.enqueue(conn, [call], queue).jobs[0].id


def _status(conn: redis.Redis, job_id: str) -> str:
    return Job.fetch(job_id, connection=conn, serializer=SERIALIZER).get_status().value


def _finished(conn: redis.Redis, job_id: str) -> bool:
    return _status(conn, job_id) == "finished"


def _blocked(conn: redis.Redis, queue: str) -> set[str]:
    return {name.decode() for name in conn.smembers(bells.blocked_key(queue))}


def _deaf(conn: redis.Redis, queue: str) -> set[str]:
    return {name.decode() for name in conn.smembers(bells.deaf_key(queue))}


def _pool(processes: Any, conn: redis.Redis, *args: str, queues: tuple[str, ...] = ("bell-a", "bell-b"), n: int = 2):
    """A consumer of ``n`` workers on ``queues`` whose looks are 300 s apart, once all wait idle."""
    env = cli_env(WORKQUEUE_IDLE_LOOK_GAP=LOOK_GAP)
    queue_args = [arg for queue in queues for arg in ("--queue", queue)]
    consumer = processes.start("consumer_main.py", "--workers", str(n), *queue_args, *args, env=env)
    wait_for(lambda: len(workers(conn)) == n, 30, f"{n} workers")
    wait_for(lambda: len(_blocked(conn, queues[0])) == n, 30, "the workers idle, blocked on the first queue")
    return consumer


def test_a_job_of_a_pools_second_queue_starts_without_waiting_for_a_look(conn, processes) -> None:
    consumer = _pool(processes, conn)
    assert len(_deaf(conn, "bell-b")) == 2  # blocked on bell-a, deaf to bell-b: what a bell is for
    for _ in range(3):  # one at a time: each finds both workers idle again
        job_id = _enqueue(conn, "bell-b")
        wait_for(lambda job_id=job_id: _finished(conn, job_id), 30, "the job of the second queue")
        wait_for(lambda: len(_blocked(conn, "bell-a")) == 2, 30, "both workers idle again")
    job_ids = [_enqueue(conn, "bell-b") for _ in range(4)]  # more jobs than idle workers
    wait_for(lambda: all(_finished(conn, job_id) for job_id in job_ids), 30, "four jobs of the second queue")
    assert consumer.poll() is None


def test_a_high_priority_job_starts_without_waiting_for_a_look(conn, processes) -> None:
    _pool(processes, conn, queues=("bell-a",))
    job_id = _enqueue(conn, "bell-a", priority="high")  # onto the level's list, which no BLMOVE watches
    wait_for(lambda: _finished(conn, job_id), 30, "the high-priority job")
    args = ["--task", "sleep", "--param", "seconds=0.05", "--queue", "bell-a", "--priority", "urgent"]
    done = run_cli("producer_main.py", *args)
    assert done.returncode == 0, done.stderr
    wait_for(lambda: conn.zcard(Queue("bell-a", connection=conn).finished_job_registry.key) == 2, 30, "the urgent job")


def test_a_dependent_released_into_another_queue_starts_without_waiting_for_a_look(conn, processes) -> None:
    # The dependent is enqueued by the worker that ends the first job, through RQ's enqueue of an
    # existing job (``rq_compat.route_enqueue``), which rings the bell of a worker deaf to its queue:
    # here the only worker of that queue, in another consumer, waiting on its first queue.
    env = cli_env(WORKQUEUE_IDLE_LOOK_GAP=LOOK_GAP)
    processes.start("consumer_main.py", "--workers", "1", "--queue", "bell-a", env=env)
    processes.start("consumer_main.py", "--workers", "1", "--queue", "bell-c", "--queue", "bell-b", env=env)
    wait_for(lambda: len(_blocked(conn, "bell-a")) == len(_blocked(conn, "bell-c")) == 1, 30, "both workers idle")
    first = _enqueue(conn, "bell-a", seconds=0.5)
    then = producer.enqueue(conn, [producer.TaskCall.build("sleep", {"seconds": 0.05})], "bell-b", after=[first])
    wait_for(lambda: _finished(conn, then.jobs[0].id), 30, "the dependent job in the other queue")


def test_a_worker_with_free_slots_is_woken_for_another_queue_while_it_runs_a_job(conn, processes) -> None:
    _pool(processes, conn, "--concurrency", "3", n=1)
    long = _enqueue(conn, "bell-a", seconds=20)
    wait_for(lambda: _status(conn, long) == "started", 30, "the long job")
    wait_for(lambda: len(_deaf(conn, "bell-b")) == 1, 15, "the worker noted idle for its free slots")
    job_ids = [_enqueue(conn, "bell-b") for _ in range(3)]
    wait_for(lambda: all(_finished(conn, job_id) for job_id in job_ids), 15, "the other queue's jobs beside it")
    assert _status(conn, long) == "started"


def test_a_wrong_look_gap_is_one_line_and_exit_2() -> None:
    for bad in ("soon", "0", "-1", "1000"):
        done = run_cli("consumer_main.py", "--workers", "1", env=cli_env(WORKQUEUE_IDLE_LOOK_GAP=bad))
        assert done.returncode == 2, (bad, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and "WORKQUEUE_IDLE_LOOK_GAP" in done.stderr


# --- in one process: the sets, and the wake that comes before the wait ------------------------------


@contextmanager
def _worker(conn: redis.Redis, *queues: str, name: str = "bell-worker") -> Iterator[CatalogueWorker]:
    """A worker on ``queues`` listening to its channel, whose looks are 300 s apart; it leaves at the end."""
    conn.flushdb()
    rq_compat.install()
    worker = CatalogueWorker(list(queues), connection=conn, name=name)
    worker.idle_look_gap = float(LOOK_GAP)
    worker.register_birth()
    worker.set_state("idle")
    job_steps.prepare(conn)
    worker.subscribe()
    try:
        yield worker
    finally:
        worker.unsubscribe()
        worker.register_death()


def _claim_waiting(worker: CatalogueWorker, timeout: int) -> tuple[list[Any], threading.Thread]:
    """``_wait_and_claim(timeout)`` in a thread: its answer (the job, or the exception) in the list."""
    answer: list[Any] = []

    def wait() -> None:
        try:
            answer.append(worker._wait_and_claim(timeout))
        except DequeueTimeout as exc:
            answer.append(exc)

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    return answer, thread


def test_an_idle_worker_is_noted_where_it_blocks_and_taken_out_when_it_claims(conn) -> None:
    with _worker(conn, "bell-a", "bell-b", "bell-c") as worker:
        assert worker._claim() is None
        assert _blocked(conn, "bell-a") == {worker.name} and not _deaf(conn, "bell-a")
        assert _deaf(conn, "bell-b") == _deaf(conn, "bell-c") == {worker.name}
        for key in (bells.blocked_key("bell-a"), bells.deaf_key("bell-c")):  # claim.lua's TTL is the setting's
            assert settings.BELL_NOTE_TTL - 5 <= conn.ttl(key) <= settings.BELL_NOTE_TTL
        pausing.pause(conn, "bell-a")  # its BLMOVE now waits on bell-b
        assert worker._claim() is None
        assert _blocked(conn, "bell-b") == {worker.name} and not _blocked(conn, "bell-a")
        assert _deaf(conn, "bell-a") == _deaf(conn, "bell-c") == {worker.name} and not _deaf(conn, "bell-b")
        pausing.resume(conn, "bell-a")
        job_id = _enqueue(conn, "bell-c")
        claimed = worker._claim()
        assert claimed is not None and claimed[0].id == job_id
        for queue in ("bell-a", "bell-b", "bell-c"):
            assert not _blocked(conn, queue) and not _deaf(conn, queue)
        assert worker._claim() is None  # idle again, then leaving: taken out
        assert _blocked(conn, "bell-a") == {worker.name}
        worker.teardown()
        assert not _blocked(conn, "bell-a") and not _deaf(conn, "bell-b")


def test_a_waiting_worker_is_woken_by_a_job_of_another_queue_and_of_another_level(conn) -> None:
    with _worker(conn, "bell-a", "bell-b") as worker:
        for queue, options in (("bell-b", {}), ("bell-a", {"priority": "high"}), ("bell-b", {"priority": 0})):
            answer, thread = _claim_waiting(worker, 60)
            wait_for(lambda: _blocked(conn, "bell-a") == {worker.name}, 15, "the worker noted idle")
            job_id = _enqueue(redis.Redis(connection_pool=conn.connection_pool), queue, **options)
            thread.join(30)
            assert not thread.is_alive(), "the wait was not ended by the bell"
            assert answer and not isinstance(answer[0], Exception) and answer[0][0].id == job_id, answer


def test_a_wake_that_comes_before_the_wait_makes_the_worker_look_instead(conn) -> None:
    # The bell rings between the worker's last look and its BLMOVE: it must not then wait a whole slice.
    with _worker(conn, "bell-a", "bell-b") as worker:
        assert worker._claim() is None
        job_id = _enqueue(conn, "bell-b")  # rang the worker, which was not waiting yet
        wait_for(lambda: worker.idle_bell._rings == 1, 15, "the wake heard")
        conn.config_resetstat()
        claimed = worker._claim(worker.queues[0], wait=60)
        assert claimed is not None and claimed[0].id == job_id
        assert "cmdstat_blmove" not in conn.info("commandstats")  # it looked, and did not wait


def test_a_worker_gone_without_leaving_is_skipped_by_the_bell(conn) -> None:
    with _worker(conn, "bell-a", "bell-b") as worker:
        answer, thread = _claim_waiting(worker, 60)
        wait_for(lambda: _deaf(conn, "bell-b") == {worker.name}, 15, "the worker noted idle")
        conn.sadd(bells.deaf_key("bell-b"), "gone-1", "gone-2", "gone-3")  # nobody listens on their channels
        job_id = _enqueue(conn, "bell-b")
        thread.join(30)
        assert answer and answer[0][0].id == job_id, answer


def test_no_bell_is_rung_with_no_idle_worker_nor_for_a_job_a_blmove_takes(conn) -> None:
    with _worker(conn, "bell-a", "bell-b") as worker:
        conn.config_resetstat()
        _enqueue(conn, "bell-a")  # no worker noted idle: no PUBLISH
        assert "cmdstat_publish" not in conn.info("commandstats")
        assert worker._claim() is not None and worker._claim() is None  # now blocked on bell-a's normal list
        conn.config_resetstat()
        _enqueue(conn, "bell-a")  # Redis hands it to the BLMOVE: no bell either
        assert "cmdstat_publish" not in conn.info("commandstats")
        _enqueue(conn, "bell-a", priority="high")
        assert conn.info("commandstats")["cmdstat_publish"]["calls"] == 1


def test_rqs_own_enqueue_of_an_existing_job_rings_too(conn) -> None:
    with _worker(conn, "bell-a", "bell-b") as worker:
        job_id = _enqueue(conn, "bell-b")
        conn.lrem(Queue("bell-b", connection=conn).key, 1, job_id)  # as if it had not been pushed yet
        assert worker._claim() is None
        queue = Queue("bell-b", connection=conn, serializer=worker.serializer)
        rq_compat.enqueue_job(queue, Job.fetch(job_id, connection=conn, serializer=SERIALIZER))
        wait_for(lambda: worker.idle_bell._rings == 1, 15, "the wake heard")


@pytest.mark.parametrize("queues", [("bell-a",), ("bell-a", "bell-b")])
def test_the_enqueue_of_many_jobs_rings_one_worker_per_job_at_most(conn, queues) -> None:
    with _worker(conn, *queues) as worker:
        assert worker._claim() is None
        call = producer.TaskCall.build("sleep", {"seconds": 0.05}, priority="high")
        conn.config_resetstat()
        producer.enqueue(conn, [call] * 5, queues[-1])
        assert conn.info("commandstats")["cmdstat_publish"]["calls"] == 1  # one idle worker: one bell


def test_a_resume_ends_the_wait_of_a_worker_blocked_on_its_other_queue(conn) -> None:
    with _worker(conn, "bell-a", "bell-b") as worker:
        pausing.pause(conn, "bell-a")
        job_id = _enqueue(conn, "bell-a")
        answer, thread = _claim_waiting(worker, 60)
        wait_for(lambda: _blocked(conn, "bell-b") == {worker.name}, 15, "the worker blocked on bell-b")
        pausing.resume(redis.Redis(connection_pool=conn.connection_pool), "bell-a")
        thread.join(30)
        assert not thread.is_alive(), "the resume did not end the wait"
        assert answer and answer[0][0].id == job_id, answer
