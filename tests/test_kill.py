"""kill_thread/ with real worker processes: graceful and immediate stops, per queue and per name,
dead workers cleaned, jobs stopped and cancelled; and the consumer's side of each."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest
import redis
from rq import Queue, Worker
from rq.job import Job

from tests.helpers import (
    ROOT,
    child_pids,
    cli_env,
    fetch,
    free_port,
    run_cli,
    start_consumer,
    status,
    wait_for,
    workers,
)
from workqueue import producer, recovery
from workqueue.jobs import SERIALIZER, CatalogueJob


def enqueue(conn: redis.Redis, task: str, queue: str = "queue_one", **params) -> Job:
    return producer.enqueue(conn, [producer.TaskCall.build(task, params)], queue).jobs[0]


def lose_machine(conn: redis.Redis, consumer, worker_name: str) -> None:
    """SIGKILL a consumer and its busy worker together, as a lost machine would; then check that
    nothing they started runs on (the horse and RQ's scheduler die with their worker)."""
    worker_pid = next(w.pid for w in workers(conn) if w.name == worker_name)
    family = psutil.Process(consumer.pid).children(recursive=True)
    os.kill(consumer.pid, signal.SIGKILL)
    os.kill(worker_pid, signal.SIGKILL)
    consumer.wait(10)
    _gone, alive = psutil.wait_procs(family, timeout=15)
    assert not alive, f"outlived their worker: {alive}"


def busy_worker(conn: redis.Redis, job: Job) -> str:
    wait_for(lambda: status(conn, job) == "started", 20, "the job to start")
    return fetch(conn, job).worker_name


def test_graceful_stop_waits_for_the_running_job_then_the_consumer_exits_0(conn, processes) -> None:
    job = enqueue(conn, "sleep", seconds=6)  # still running when kill_workers looks, on a loaded machine too
    consumer = start_consumer(processes, conn, 1)
    name = busy_worker(conn, job)
    result = run_cli("kill_thread/kill_workers.py", "--all")
    assert result.returncode == 0, result.stderr
    assert f"asked {name} to stop after its current job (running job {job.id})" in result.stdout
    assert f"{name} stopped" in result.stdout
    assert status(conn, job) == "finished"
    out, _ = consumer.communicate(timeout=20)
    assert consumer.returncode == 0 and "stopped by kill_workers" in out


def test_now_puts_the_job_back_and_another_worker_finishes_it(conn, processes) -> None:
    job = enqueue(conn, "sleep", seconds=6)  # still running when kill_workers looks, on a loaded machine too
    consumer = start_consumer(processes, conn, 2)
    name = busy_worker(conn, job)
    started = time.monotonic()
    result = run_cli("kill_thread/kill_workers.py", "--worker", name, "--now")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 10
    assert f"asked {name} to stop at once" in result.stdout
    assert f"job {job.id} put back at the front of queue_one" in result.stdout
    wait_for(lambda: status(conn, job) == "finished", 30, "another worker to finish the job")
    finished = fetch(conn, job)
    assert finished.worker_name != name
    assert finished.meta["interruptions"][0]["reason"] == "stopped by kill_workers"
    assert len(workers(conn)) == 1  # the stopped worker stays stopped; the other runs on
    assert consumer.poll() is None


def test_now_fails_a_job_whose_task_is_not_safe_to_rerun(conn, monkeypatch) -> None:
    """Given a started job whose task is marked not safe to re-run, when it is handed back, it fails."""
    import dataclasses

    import task_def

    job = enqueue(conn, "sleep", seconds=1)
    worker = Worker(["queue_one"], connection=conn, serializer=SERIALIZER, job_class=CatalogueJob, name="w-test")
    worker.register_birth()
    queued = CatalogueJob.fetch(job.id, connection=conn, serializer=SERIALIZER)
    worker.prepare_execution(queued)
    worker.prepare_job_execution(queued)
    assert status(conn, job) == "started"
    unsafe = dataclasses.replace(task_def.get_task("sleep"), rerun_safe=False)
    monkeypatch.setattr(recovery.task_def, "by_path", lambda path: unsafe)
    outcome = recovery.hand_back(conn, queued, "stopped by kill_workers", "w-test")
    assert outcome.outcome == recovery.FAILED
    failed = fetch(conn, job)
    assert failed.get_status().value == "failed"
    assert "stopped by kill_workers; not re-run" in failed.latest_result().exc_string
    assert job.id in Queue("queue_one", connection=conn).failed_job_registry
    assert job.id not in Queue("queue_one", connection=conn).started_job_registry


@pytest.mark.slow
def test_stopping_one_queues_workers_leaves_another_queues_running(conn, processes) -> None:
    a = start_consumer(processes, conn, 1, "qa")
    start_consumer(processes, conn, 1, "qb")
    result = run_cli("kill_thread/kill_workers.py", "--queue", "qa")
    assert result.returncode == 0, result.stderr
    assert a.wait(20) == 0
    assert [w.queue_names() for w in workers(conn)] == [["qb"]]
    job = enqueue(conn, "sleep", queue="qb", seconds=0.1)
    wait_for(lambda: status(conn, job) == "finished", 20, "qb's worker to run a job")


@pytest.mark.slow
def test_sigkilled_worker_is_cleaned_and_its_job_finished_by_another(conn, processes) -> None:
    job = enqueue(conn, "sleep", seconds=2)
    lost = start_consumer(processes, conn, 1)
    name = busy_worker(conn, job)
    lose_machine(conn, lost, name)

    def cleaned() -> str:
        out = run_cli("kill_thread/clean_workers.py").stdout
        return out if "removed dead worker" in out else ""

    out = wait_for(cleaned, 30, "the dead worker's heartbeat to expire")
    assert f"removed dead worker {name}" in out and f"job {job.id} put back at the front of queue_one" in out
    assert status(conn, job) == "queued"
    result = run_cli("consumer_main.py", "--workers", "1", "--burst")
    assert result.returncode == 0 and status(conn, job) == "finished"


@pytest.mark.slow
def test_consumer_sweeps_dead_workers_of_other_consumers(conn, processes) -> None:
    job = enqueue(conn, "sleep", seconds=1)
    lost = start_consumer(processes, conn, 1)
    name = busy_worker(conn, job)
    lose_machine(conn, lost, name)
    start_consumer(processes, conn, 1)
    wait_for(lambda: status(conn, job) == "finished", 40, "the surviving consumer to hand back and run the job")
    assert name not in {w.name for w in workers(conn)}


def test_crashed_worker_is_replaced_so_the_pool_keeps_its_size(conn, processes) -> None:
    consumer = start_consumer(processes, conn, 2)
    victim = workers(conn)[0]
    family = psutil.Process(victim.pid).children(recursive=True)
    os.kill(victim.pid, signal.SIGKILL)
    assert not psutil.wait_procs(family, timeout=15)[1], "the crashed worker's scheduler outlived it"
    wait_for(lambda: len(child_pids(consumer)) == 2 and victim.pid not in child_pids(consumer), 20, "a replacement")
    wait_for(lambda: len([w for w in workers(conn) if w.pid in child_pids(consumer)]) == 2, 20, "it to register")
    assert consumer.poll() is None


def test_a_worker_killed_before_its_scheduler_is_set_up_takes_the_scheduler_with_it(conn, processes, tmp_path) -> None:
    """The scheduler asks to die with its worker (PDEATHSIG) once it runs: a worker killed before
    that, on a loaded machine, left it running for ever, an orphan heartbeating into Redis. Here
    every fork's child sleeps a second first (a ``sitecustomize``), and the worker is killed in it."""
    (tmp_path / "sitecustomize.py").write_text(
        "import os, time\nos.register_at_fork(after_in_child=lambda: time.sleep(1))\n"
    )
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    consumer = processes.start("consumer_main.py", "--workers", "1", env=cli_env(PYTHONPATH=path))
    family = wait_for(lambda: [p for w in psutil.Process(consumer.pid).children() for p in w.children()], 30, "a fork")
    (worker,) = {p.ppid() for p in family}
    os.kill(worker, signal.SIGKILL)
    alive = psutil.wait_procs(family, timeout=20)[1]
    for orphan in alive:  # no longer the consumer's: its teardown would not find it
        orphan.kill()
    assert not alive, "the killed worker's scheduler outlived it"


def test_second_signal_hands_the_running_job_back(conn, processes) -> None:
    job = enqueue(conn, "sleep", seconds=60)
    consumer = start_consumer(processes, conn, 1)
    busy_worker(conn, job)
    consumer.send_signal(signal.SIGINT)
    time.sleep(0.3)
    consumer.send_signal(signal.SIGTERM)
    consumer.communicate(timeout=20)
    assert consumer.returncode == 0
    requeued = fetch(conn, job)
    assert requeued.get_status().value == "queued" and Queue("queue_one", connection=conn).job_ids == [job.id]
    assert requeued.meta["interruptions"][0]["reason"] == "the consumer was stopped at once"


def test_kill_job_stops_running_and_cancels_queued_jobs_and_reports_unknown_ids(conn, processes) -> None:
    running = enqueue(conn, "sleep", seconds=60)
    start_consumer(processes, conn, 1)
    busy_worker(conn, running)
    waiting = enqueue(conn, "sleep", queue="unserved", seconds=60)
    result = run_cli("kill_thread/kill_job.py", running.id, waiting.id, "no-such-id")
    assert result.returncode == 1
    assert f"job {running.id} stopped" in result.stdout and f"job {waiting.id} cancelled" in result.stdout
    assert "no such job: no-such-id" in result.stderr
    q = Queue("queue_one", connection=conn, serializer=SERIALIZER)
    assert status(conn, running) == "stopped" and running.id in q.failed_job_registry
    unserved = Queue("unserved", connection=conn, serializer=SERIALIZER)
    assert status(conn, waiting) == "canceled" and waiting.id in unserved.canceled_job_registry
    assert fetch(conn, waiting).meta["cancelled_by"] == "kill_job"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--worker", "nope"], r"no worker named 'nope'; running workers: .+\.w1"),
        (["--queue", "nope"], r"no worker listens on queue 'nope'; queues with workers: queue_one"),
        ([], r"choose exactly one of --all, --queue NAME, --worker NAME"),
        (["--all", "--queue", "queue_one"], r"choose exactly one"),
        (["--queue", "a,b"], r"invalid queue name 'a,b'"),
    ],
)
def test_bad_names_and_empty_selections_are_exit_2(conn, processes, args: list, message: str) -> None:
    start_consumer(processes, conn, 1)
    result = run_cli("kill_thread/kill_workers.py", *args)
    assert result.returncode == 2 and re.search(message, result.stderr), result.stderr
    assert len(workers(conn)) == 1


def test_no_workers_at_all_is_exit_2(conn) -> None:
    result = run_cli("kill_thread/kill_workers.py", "--all")
    assert result.returncode == 2 and "no workers are running" in result.stderr


@pytest.mark.slow
def test_dashboard_sweeps_dead_workers_too(conn, processes) -> None:
    job = enqueue(conn, "sleep", seconds=1)
    lost = start_consumer(processes, conn, 1)
    name = busy_worker(conn, job)
    lose_machine(conn, lost, name)
    processes.start("dashboard_main.py", "--port", str(free_port()))
    wait_for(lambda: status(conn, job) == "queued", 40, "the dashboard's sweep to hand the job back")
    assert name not in {w.name for w in workers(conn)}


def test_a_killed_consumer_s_busy_worker_finishes_its_job_then_leaves_with_all_it_started(conn, processes) -> None:
    """The consumer SIGKILLed: its worker, told by the kernel (PDEATHSIG), stops warm: its job
    finishes, then it leaves, its horse and RQ's scheduler with it. A parent dying with several
    threads can send that signal once per thread (each adopts the worker in turn as it dies): sent
    twice more here, as the kernel may, it is still one warm stop, not a second that stops at once."""
    consumer = start_consumer(processes, conn, 1)
    job = enqueue(conn, "sleep", seconds=3)
    name = busy_worker(conn, job)
    worker_pid = next(w.pid for w in workers(conn) if w.name == name)
    family = psutil.Process(consumer.pid).children(recursive=True)
    assert len(family) == 3  # the worker, its horse and its RQ scheduler
    os.kill(consumer.pid, signal.SIGKILL)
    consumer.wait(10)
    for _ in range(2):
        os.kill(worker_pid, signal.SIGTERM)
        time.sleep(0.05)
    _gone, alive = psutil.wait_procs(family, timeout=30)
    assert not alive, f"outlived their consumer: {alive}"
    assert status(conn, job) == "finished"
    assert name not in {w.name for w in Worker.all(connection=conn)}


def test_a_stop_at_once_stops_the_worker_s_scheduler_too(redis_url: str) -> None:
    """A stop at once raises out of whatever the worker does, its teardown included, where RQ
    stops its scheduler: it stops the scheduler itself, or the worker's exit waits for it forever.
    In a process of its own: a stop also ends the retries of every Redis client in its process."""
    code = """if True:
        import os, signal, sys, redis
        from workqueue.worker.catalogue_worker import CatalogueWorker
        def say(line):  # one write: the scheduler's own log lines go to the same pipe, in between
            sys.stdout.write(line + "\\n")
            sys.stdout.flush()
        conn = redis.Redis.from_url(os.environ["REDIS_URL"])
        worker = CatalogueWorker(["queue_one"], connection=conn, name=f"cold.{os.getpid()}")
        worker.register_birth()
        worker._start_scheduler()
        scheduler = worker.scheduler._process
        say(f"scheduler running: {scheduler is not None and scheduler.is_alive()}")
        try:
            worker.request_force_stop(signal.SIGINT, None)
        except SystemExit:
            say(f"stopped at once; scheduler running: {scheduler.is_alive()}")
        if scheduler.is_alive():  # else this process's exit would wait for it
            scheduler.terminate()
            scheduler.join(10)
    """
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    said = [line for line in done.stdout.splitlines() if "scheduler running:" in line]  # not RQ's logs
    assert said == [
        "scheduler running: True",
        "stopped at once; scheduler running: False",
    ], done.stderr
