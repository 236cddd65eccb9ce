"""Chaos: 2,000 short jobs over 6 workers while workers and work horses are SIGKILLed every second
or so and Redis is restarted once. At the end every job has finished exactly once or more;
none is missing; how many ran twice is reported."""

from __future__ import annotations

import collections
import os
import random
import signal
import threading
import time

import psutil
import pytest
import redis
from rq import Queue, Worker

from tests import fault_tasks
from tests.helpers import Processes, RedisServer, cli_env, wait_for
from workqueue import producer
from workqueue.jobs import SERIALIZER

pytestmark = pytest.mark.slow

JOBS, WORKERS, BUDGET = 2000, 6, 110.0


def test_chaos_every_job_finishes_none_missing(processes: Processes, tmp_path, capsys) -> None:
    server = RedisServer("--appendonly", "yes", "--appendfsync", "everysec")
    server.wait_ready()
    try:
        run_chaos(server, processes, tmp_path, capsys)
    finally:
        processes.stop_all()  # before Redis goes: the workers would wait for it to come back
        server.stop()


def _own_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def run_chaos(server: RedisServer, processes: Processes, tmp_path, capsys) -> None:
    conn = redis.Redis(port=server.port)
    log = tmp_path / "ran.log"
    task = next(t for t in fault_tasks.TASKS if t.name == "chaos_mark")
    # 20 ms of work each: about 7 s for the 6 workers, so the kills and the restart land mid-run.
    calls = [producer.TaskCall(task, task.validate({"log": str(log), "tag": i, "seconds": 0.02})) for i in range(JOBS)]
    jobs = producer.enqueue(conn, calls, "chaos").jobs
    env = cli_env(WORKQUEUE_EXTRA_TASKS="tests.fault_tasks", REDIS_URL=server.url)
    consumer = processes.start("consumer_main.py", "--workers", str(WORKERS), "--queue", "chaos", env=env)
    started = time.monotonic()
    stop = threading.Event()
    kills = collections.Counter()
    rng = random.Random(1)

    def chaos() -> None:
        restarted = False
        while not stop.wait(rng.uniform(0.5, 1.5)):
            if not restarted and time.monotonic() - started > 3:
                server.restart(signal.SIGTERM)  # a Redis restart: the append-only log keeps everything
                kills["redis restart"] += 1
                restarted = True
                continue
            pids = [c.pid for c in psutil.Process(consumer.pid).children()]
            if not pids:
                continue
            worker = psutil.Process(rng.choice(pids))
            # The work horse is the child in a process group of its own (RQ's scheduler is not).
            horses = [c for c in worker.children() if _own_group(c.pid)]
            victim, kind = (horses[0], "work horse") if horses and rng.random() < 0.5 else (worker, "worker")
            try:
                victim.send_signal(signal.SIGKILL)
                kills[kind] += 1
            except psutil.NoSuchProcess:
                pass

    killer = threading.Thread(target=chaos, daemon=True)
    killer.start()
    try:
        q = Queue("chaos", connection=conn, serializer=SERIALIZER)

        def all_finished() -> bool:
            return len(q.finished_job_registry.get_job_ids(cleanup=False)) == JOBS

        wait_for(lambda: all_finished() or time.monotonic() - started > 60, BUDGET, "the chaos phase")
        stop.set()
        killer.join(10)
        try:
            wait_for(all_finished, BUDGET - (time.monotonic() - started), "every job to finish")
        except AssertionError:
            with capsys.disabled():
                print(
                    "\nstate:",
                    collections.Counter(job.get_status(refresh=True).value for job in jobs),
                    "queue",
                    len(q),
                    "started",
                    q.started_job_registry.get_job_ids(cleanup=False)[:5],
                    "intermediate",
                    conn.llen(q.intermediate_queue_key),
                    "kills",
                    dict(kills),
                    "workers",
                    [(w.name, w.get_state()) for w in Worker.all(connection=conn)],
                    "consumer alive",
                    consumer.poll() is None,
                )
                print(consumer.output()[1][-3000:])
            raise
    finally:
        stop.set()
    elapsed = time.monotonic() - started
    statuses = collections.Counter(job.get_status(refresh=True).value for job in jobs)
    runs = collections.Counter(int(line) for line in log.read_text().split())
    missing = [i for i in range(JOBS) if i not in runs]
    twice = sum(1 for n in runs.values() if n > 1)
    with capsys.disabled():
        print(
            f"\nchaos: {JOBS} jobs, {WORKERS} workers, {dict(kills)} in {elapsed:.1f} s; "
            f"statuses {dict(statuses)}; ran twice or more: {twice}; missing: {len(missing)}"
        )
    assert statuses == {"finished": JOBS} and not missing
    assert kills["worker"] + kills["work horse"] >= 3 and kills["redis restart"] == 1
    wait_for(lambda: len(Worker.all(connection=conn)) == WORKERS, 20, "the pool to be back to its size")
