"""Handing back dead workers' jobs, against real Redis and real processes: unreadable jobs
(issue 13 item 3), a consumer killed just now (item 4), concurrent sweeps (item 6), a frozen
worker's stale horse (item 10), and a job's end under Redis's maxmemory (item 8)."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import redis
from rq import Queue, Worker
from rq.job import Job

from tests import recovery_tasks
from tests.helpers import ROOT, Processes, RedisServer, cli_env, run_cli, start_by_a_dead_worker, wait_for
from workqueue import control, jobstats, producer, recovery
from workqueue.jobs import SERIALIZER, CatalogueJob

TASKS = {task.name: task for task in recovery_tasks.TASKS}
QUEUE = "queue_one"


@pytest.fixture
def env(redis_url: str) -> dict:
    return cli_env(WORKQUEUE_EXTRA_TASKS="tests.recovery_tasks", REDIS_URL=redis_url)


def enqueue(conn: redis.Redis, name: str, queue: str = QUEUE, **params) -> str:
    task = TASKS[name] if name in TASKS else __import__("task_def").get_task(name)
    return producer.enqueue(conn, [producer.TaskCall(task, task.validate(params))], queue).jobs[0].id


def status(conn: redis.Redis, job_id: str) -> str:
    return (conn.hget(Job.key_for(job_id), "status") or b"").decode()


def in_started(conn: redis.Redis, job_id: str, queue: str = QUEUE) -> bool:
    members = conn.zrange(Queue(queue, connection=conn).started_job_registry.key, 0, -1)
    return any(m.decode().startswith(job_id + ":") for m in members)


def test_a_dead_workers_unreadable_jobs_are_failed_with_the_reason_and_nothing_stops(conn) -> None:
    garbage, pickled, fine = (enqueue(conn, "sleep", seconds=0.1) for _ in range(3))
    start_by_a_dead_worker(conn, 3)
    conn.hset(Job.key_for(garbage), "data", b"\x80\x04not json at all")
    conn.hset(Job.key_for(pickled), "meta", pickle.dumps({"by": "a foreign client"}))
    _ghosts, handed = recovery.sweep(conn)
    assert {h.job_id: h.outcome for h in handed} == {garbage: "failed", pickled: "failed", fine: "requeued"}
    q = Queue(QUEUE, connection=conn, serializer=SERIALIZER)
    for job_id in (garbage, pickled):
        assert status(conn, job_id) == "failed" and job_id in q.failed_job_registry and not in_started(conn, job_id)
        result = Job.fetch(job_id, connection=conn, serializer=SERIALIZER).latest_result()
        assert "unreadable job: its data is not JSON" in result.exc_string
    assert conn.hget(Job.key_for(pickled), "meta") == pickle.dumps({"by": "a foreign client"})  # left as it was
    assert q.job_ids == [fine] and status(conn, fine) == "queued"
    assert recovery.sweep(conn)[1] == []  # nothing left to hand back
    (stats,) = jobstats.collect(conn, [QUEUE])
    assert sum(t.finished for t in stats.tasks.values()) == 0  # never counted finished
    # Queue-wide actions act on the readable jobs and report the others.
    waiting = enqueue(conn, "sleep", seconds=0.1)
    conn.hset(Job.key_for(waiting), "data", b"garbage")
    stops = control.cancel_queued(conn, QUEUE, by="test")
    unreadable = control.Outcome.UNREADABLE
    assert {s.job_id: s.outcome for s in stops} == {fine: control.Outcome.DONE, waiting: unreadable}
    assert status(conn, fine) == "canceled" and "not readable as JSON" in next(s for s in stops if s.failed).message
    requeues = control.requeue_failed(conn, QUEUE, by="test")
    assert sorted(s.job_id for s in requeues if s.outcome is unreadable) == sorted([garbage, pickled])


@pytest.mark.slow
def test_eight_clean_workers_at_once_hand_a_dead_job_back_exactly_once(conn, env, tmp_path) -> None:
    marker = tmp_path / "runs"
    for round_ in range(4):
        marker.write_text("")
        job_id = enqueue(conn, "mark_then_progress", marker=str(marker))
        start_by_a_dead_worker(conn, 1)
        # Redis holds every client's commands for a while: the eight start meanwhile, and all sweep at once.
        conn.execute_command("CLIENT", "PAUSE", 3000)
        cleaners = [
            subprocess.Popen(
                [sys.executable, str(ROOT / "kill_thread/clean_workers.py")],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(8)
        ]
        outputs = [c.communicate(timeout=60) for c in cleaners]
        assert all(c.returncode == 0 for c in cleaners), [err for _, err in outputs]
        assert sum(f"job {job_id} put back" in out for out, _ in outputs) == 1, outputs
        assert conn.lrange(Queue(QUEUE, connection=conn).key, 0, -1).count(job_id.encode()) == 1, f"round {round_}"
        result = run_cli("consumer_main.py", "--workers", "2", "--burst", env=env)
        assert result.returncode == 0, result.stderr
        assert status(conn, job_id) == "finished" and len(marker.read_text().split()) == 1


def lose_consumer(conn: redis.Redis, consumer: subprocess.Popen) -> str:
    """SIGKILL a consumer and its busy worker together; the worker's name (still registered)."""
    busy = wait_for(lambda: [w for w in Worker.all(connection=conn) if w.get_state() == "busy"], 30, "a busy worker")
    worker = busy[0]
    family = psutil.Process(consumer.pid).children(recursive=True)
    os.kill(consumer.pid, signal.SIGKILL)
    os.kill(worker.pid, signal.SIGKILL)
    consumer.wait(10)
    assert not psutil.wait_procs(family, timeout=15)[1]
    return worker.name


def a_job_left_by_a_lost_consumer(conn, env, processes, marker: Path) -> tuple[str, str]:
    """A 30 s job, started, then its consumer and worker SIGKILLed: the job's id and the dead worker's name."""
    job_id = enqueue(conn, "mark_then_progress", marker=str(marker), seconds=30)
    lost = processes.start("consumer_main.py", "--workers", "1", env=env)
    wait_for(lambda: marker.exists() and marker.read_text(), 30, "the job to start")
    return job_id, lose_consumer(conn, lost)


@pytest.mark.slow
def test_a_burst_consumer_right_after_a_crash_runs_the_job_the_crash_left(conn, env, processes, tmp_path) -> None:
    marker = tmp_path / "runs"
    job_id, name = a_job_left_by_a_lost_consumer(conn, env, processes, marker)
    assert name in {w.name for w in Worker.all(connection=conn)}  # its registration has not lapsed yet
    result = run_cli("consumer_main.py", "--workers", "1", "--burst", env=env)
    assert result.returncode == 0, result.stderr
    assert status(conn, job_id) == "finished" and len(marker.read_text().split()) == 2


def test_clean_workers_just_after_a_kill_removes_a_dead_local_worker_at_once(conn, env, processes, tmp_path) -> None:
    job_id, name = a_job_left_by_a_lost_consumer(conn, env, processes, tmp_path / "runs")
    result = run_cli("kill_thread/clean_workers.py", env=env)
    assert result.returncode == 0, result.stderr
    assert f"removed dead worker {name}" in result.stdout and f"job {job_id} put back" in result.stdout
    assert status(conn, job_id) == "queued" and name not in {w.name for w in Worker.all(connection=conn)}


@pytest.mark.slow
def test_a_frozen_workers_horse_resumed_after_its_job_was_rerun_rewrites_nothing(
    conn, env, processes, tmp_path
) -> None:
    marker = tmp_path / "runs"
    job_id = enqueue(conn, "mark_then_progress", marker=str(marker), seconds=3)
    first = processes.start("consumer_main.py", "--workers", "1", env=env)
    horse = int(wait_for(lambda: marker.exists() and marker.read_text().split(), 30, "the job to start")[0])
    frozen = [p.pid for p in psutil.Process(first.pid).children(recursive=True)] + [first.pid]
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        processes.start("consumer_main.py", "--workers", "1", env=env)  # its sweep hands the job back once lapsed
        wait_for(lambda: status(conn, job_id) == "finished", 60, "the job to be handed back and run again")
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    rerun = Job.fetch(job_id, connection=conn, serializer=SERIALIZER)
    second = rerun.meta["progress"]["message"]
    assert second != f"pid {horse}"
    wait_for(
        lambda: Job.fetch(job_id, connection=conn, serializer=SERIALIZER).meta.get("superseded"),
        30,
        "the resumed horse to end, superseded",
    )
    job = CatalogueJob.fetch(job_id, connection=conn, serializer=SERIALIZER)  # its result is in its hash
    assert job.get_status() == "finished" and job.meta["progress"]["message"] == second
    assert len(job.results()) == 1 and job.return_value() != horse
    # It ran to its end, or its worker's next heartbeat found the job handed back and stopped it first.
    assert [s["outcome"] for s in job.meta["superseded"]] in (["finished"], ["stopped: the job had been handed back"])
    assert len(job.meta["interruptions"]) == 1 and len(marker.read_text().split()) == 2

    def task() -> jobstats.TaskStats | None:
        return jobstats.collect(conn, [QUEUE])[0].tasks.get("mark_then_progress")

    # the statistics are written by the horse about once a second (tallies.Tally)
    wait_for(lambda: (found := task()) is not None and found.finished >= 1, 10, "the statistics")
    stats = task()
    assert stats is not None and stats.finished == 1 and stats.enqueued == 1


@pytest.mark.slow
def test_no_jobs_end_is_half_written_while_redis_is_out_of_memory(tmp_path) -> None:
    """Jobs end while Redis refuses writes (maxmemory, noeviction): each end is refused whole, never
    half written, and is recorded once Redis has room again."""
    server = RedisServer("--maxmemory", "8mb", "--maxmemory-policy", "noeviction")
    server.wait_ready()
    procs = Processes()
    try:
        conn = redis.Redis(port=server.port)
        env = cli_env(WORKQUEUE_EXTRA_TASKS="tests.recovery_tasks", REDIS_URL=server.url)
        marker = tmp_path / "runs"
        # Long enough that none ends before Redis is full: the last of the three may start a second
        # or more after the first on a loaded machine, and filling Redis takes a moment too.
        jobs = [enqueue(conn, "mark_then_progress", marker=str(marker), seconds=5) for _ in range(3)]
        # One worker process per job (the pool's own outage handling is not what is tested here).
        code = (
            "import sys; from workqueue.connection import connect; "
            "from workqueue.worker.catalogue_worker import CatalogueWorker; "
            "c, _ = connect(None, ride_out_outages=True); "
            "CatalogueWorker(['queue_one'], connection=c, name=sys.argv[1]).work(logging_level='WARNING')"
        )
        for n in range(3):
            procs.started.append(
                subprocess.Popen(
                    [sys.executable, "-c", code, f"oom.w{n}"],
                    cwd=ROOT,
                    env=env,
                    start_new_session=True,
                    stdout=subprocess.DEVNULL,
                    stderr=open(tmp_path / f"w{n}.log", "w"),
                )
            )
        wait_for(lambda: marker.exists() and len(marker.read_text().split()) == 3, 30, "the three jobs to start")
        filler = 0
        while True:  # fill Redis up to its maxmemory
            try:
                conn.set(f"filler:{filler}", b"x" * 10_000)
                filler += 1
            except redis.exceptions.OutOfMemoryError:
                break
        # ... and hold it there: memory hovers about the limit (client buffers come and go, the script
        # engine's garbage is collected), so the limit is set a megabyte below what is used, where every
        # write that needs memory is refused.
        conn.config_set("maxmemory", conn.info("memory")["used_memory"] - 1_000_000)
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:  # the jobs end meanwhile: no end may be half written
            for job_id in jobs:
                finished_reg = conn.zscore(Queue(QUEUE, connection=conn).finished_job_registry.key, job_id)
                state = status(conn, job_id)
                assert state in ("started", "finished"), state
                assert (finished_reg is not None) == (state == "finished")
                assert (state == "finished") != in_started(conn, job_id)
            time.sleep(0.1)
        with pytest.raises(redis.exceptions.OutOfMemoryError):  # still refusing: what follows is meaningful
            conn.set("probe", b"x" * 10_000)
        assert [status(conn, job_id) for job_id in jobs] == ["started"] * 3  # refused, whole
        conn.delete(*[f"filler:{i}" for i in range(filler)])
        conn.config_set("maxmemory", "64mb")
        wait_for(lambda: all(status(conn, j) == "finished" for j in jobs), 60, "the ends to be recorded")
        for job_id in jobs:
            job = CatalogueJob.fetch(job_id, connection=conn, serializer=SERIALIZER)  # its result is in its hash
            assert len(job.results()) == 1 and not in_started(conn, job_id)
            assert job_id.encode() in conn.zrange(Queue(QUEUE, connection=conn).finished_job_registry.key, 0, -1)
        assert len(marker.read_text().split()) == 3  # each ran once
    finally:
        procs.stop_all()
        server.stop()
