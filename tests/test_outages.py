"""Redis outages against real redis-servers and real consumers: Redis killed with the pool, frozen
(SIGSTOP), out of memory, unable to persist (MISCONF); a Redis that evicts keys, or that came back
empty. Every wait is bounded; every server and process a test starts it stops."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator

import psutil
import pytest
import redis

import workqueue
from tests import fault_tasks
from tests.helpers import ROOT, RedisServer, cli_env, run_cli, wait_for
from workqueue import guarded, outage, producer
from workqueue.connection import connect
from workqueue.worker import job_steps

pytestmark = pytest.mark.slow

FAULTS = {task.name: task for task in fault_tasks.TASKS}


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A redis-server of the test's own, which it may kill, freeze or fill."""
    own = RedisServer()
    own.wait_ready()
    yield own
    if own.process.poll() is None:
        os.kill(own.process.pid, signal.SIGCONT)
    own.stop()


def env_for(server: RedisServer) -> dict:
    return cli_env(WORKQUEUE_EXTRA_TASKS="tests.fault_tasks", REDIS_URL=server.url)


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def kill_a_worker_and_see_it_replaced(consumer: subprocess.Popen) -> None:
    """SIGKILL one of the consumer's two workers; the pool starts another."""
    victim = worker_pids(consumer)[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(
        lambda: len(worker_pids(consumer)) == 2 and victim not in worker_pids(consumer),
        20,
        "the killed worker to be replaced",
    )


def worker_pids(consumer: subprocess.Popen) -> list[int]:
    """The consumer's worker processes: its direct children."""
    try:
        return [p.pid for p in psutil.Process(consumer.pid).children() if p.status() != psutil.STATUS_ZOMBIE]
    except psutil.NoSuchProcess:
        return []


def enqueue(conn: redis.Redis, name: str, count: int = 1, **params) -> list:
    task = FAULTS[name] if name in FAULTS else __import__("task_def").get_task(name)
    return producer.enqueue(conn, [producer.TaskCall(task, task.validate(params))] * count, "queue_one").jobs


def statuses(conn: redis.Redis, jobs: list) -> list[str]:
    return [conn.hget(job.key, "status").decode() for job in jobs]


def all_finished(conn: redis.Redis, jobs: list) -> bool:
    try:
        return statuses(conn, jobs) == ["finished"] * len(jobs)
    except redis.RedisError:
        return False


# -- item 5: workers and horses never outlive their pool; a stop is honoured during an outage -----


@pytest.mark.parametrize("concurrency", [1, 2])
def test_pool_and_redis_killed_together_leave_no_worker_nor_horse(server, processes, tmp_path, concurrency) -> None:
    """Whether Redis goes before the worker hears of its pool's death or after (it stops warm,
    then its job's heartbeat finds Redis gone): nobody is left to wait for, it stops at once."""
    conn = redis.Redis(port=server.port)
    marker = tmp_path / "runs"
    enqueue(conn, "count_runs", marker=str(marker), seconds=60)  # one worker busy, with its horse
    consumer = processes.start(
        "consumer_main.py", "--workers", "2", "--concurrency", str(concurrency), env=env_for(server)
    )
    wait_for(lambda: marker.exists() and marker.read_text().split(), 30, "the job to start")
    wait_for(lambda: len(descendants(consumer.pid)) >= 4, 20, "two workers, a horse and a scheduler")
    left = descendants(consumer.pid)
    os.kill(consumer.pid, signal.SIGKILL)
    server.process.kill()
    server.process.wait(10)
    _gone, alive = psutil.wait_procs(left, timeout=20)
    for process in alive:
        process.kill()
    assert not alive, f"outlived their pool and Redis: {[(p.pid, p.name()) for p in alive]}"


def test_a_stop_is_honoured_while_redis_is_down(server, processes) -> None:
    consumer = processes.start("consumer_main.py", "--workers", "2", env=env_for(server))
    wait_for(lambda: len(worker_pids(consumer)) == 2 and len(descendants(consumer.pid)) >= 4, 20, "two workers")
    time.sleep(1)
    server.process.kill()
    server.process.wait(10)
    time.sleep(3)  # the workers are retrying Redis now
    victim = psutil.Process(worker_pids(consumer)[0])
    victim.send_signal(signal.SIGTERM)  # a worker alone
    _gone, alive = psutil.wait_procs([victim], timeout=15)
    assert not alive, "a worker ignored SIGTERM during the outage"
    left = descendants(consumer.pid)
    consumer.send_signal(signal.SIGTERM)  # the whole consumer
    consumer.wait(30)
    _gone, alive = psutil.wait_procs(left, timeout=15)
    assert not alive, f"outlived the stop: {alive}"
    out, _ = consumer.output()
    assert "Redis not answering" in out


# -- items 7 and 8: every Redis error is an outage the pool and its workers ride out ----------------


def fill_memory(conn: redis.Redis) -> Callable[[], None]:
    conn.config_set("maxmemory-policy", "noeviction")
    conn.config_set("maxmemory", 1)
    return lambda: conn.config_set("maxmemory", 0)


def break_persistence(conn: redis.Redis) -> Callable[[], None]:
    """MISCONF: a failed RDB save (into a folder since removed) with stop-writes-on-bgsave-error."""
    folder = tempfile.mkdtemp(prefix="wq-gone-")
    before = conn.config_get("dir")["dir"]
    conn.config_set("dir", folder)
    os.rmdir(folder)
    conn.config_set("save", "3600 1")
    conn.config_set("stop-writes-on-bgsave-error", "yes")
    conn.bgsave()
    wait_for(lambda: conn.info("persistence")["rdb_last_bgsave_status"] == "err", 10, "the save to fail")

    def repair() -> None:
        conn.config_set("dir", before)
        conn.bgsave()
        wait_for(lambda: conn.info("persistence")["rdb_last_bgsave_status"] == "ok", 10, "a save to succeed")
        conn.config_set("save", "")

    return repair


@pytest.mark.parametrize(
    "fault, says",
    [(fill_memory, "out of memory: maxmemory reached"), (break_persistence, "it cannot persist to disk (MISCONF)")],
)
def test_pool_and_workers_ride_out_redis_refusing_writes(server, processes, fault, says) -> None:
    conn = redis.Redis(port=server.port)
    jobs = enqueue(conn, "sleep", 6, seconds=0.1)
    repair = fault(conn)
    consumer = processes.start("consumer_main.py", "--workers", "2", env=env_for(server))
    wait_for(lambda: f"Redis is refusing writes ({says})" in consumer.output()[0], 30, "the status line to say so")
    wait_for(lambda: len(worker_pids(consumer)) == 2, 20, "two workers")
    time.sleep(3)  # workers respawned in a loop would show now
    kill_a_worker_and_see_it_replaced(consumer)
    time.sleep(SWEEP_WAIT)  # its registration lapses: the sweep meets the refusal
    assert consumer.poll() is None, consumer.output()
    assert statuses(conn, jobs) == ["queued"] * len(jobs)
    repair()
    wait_for(lambda: all_finished(conn, jobs), 40, "every job to finish once Redis takes writes")
    assert consumer.poll() is None
    _, err = consumer.output()
    assert "Traceback" not in err


@pytest.mark.parametrize("set_up", [True, False], ids=["set up first", "first request a write"])
def test_a_process_whose_first_connection_is_refused_sets_up_and_waits_to_write(server, set_up) -> None:
    """A work horse is forked as its worker sends it a job, so it may start while Redis refuses
    writes, and MISCONF refuses even a new connection's PING. Its set-up goes on (the scripts are
    loaded later) and its first guarded write waits until Redis takes it. (A horse running eight
    jobs died of this before: its jobs failed instead of waiting.)"""
    admin = redis.Redis(port=server.port)
    repair = break_persistence(admin)
    conn, _ = connect(server.url, ride_out_outages=True)  # a pool of its own: no connection open yet
    try:
        if set_up:
            job_steps.prepare(conn)
        written: list[object] = []
        no_guard = guarded.Guard("", "", [])

        def write() -> None:
            written.append(guarded.run_guarded(conn, lambda pipe: pipe.set("first", "write"), no_guard, what="a write"))

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        writer.join(1.5)
        assert writer.is_alive() and admin.get("first") is None  # waiting, nothing written
    finally:
        repair()
    writer.join(30)
    assert not writer.is_alive() and written and admin.get("first") == b"write"


def alive(process: psutil.Process) -> bool:
    """Running, not a zombie its parent has yet to reap."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_the_scheduler_rides_out_redis_refusing_writes(server, processes) -> None:
    """RQ's scheduler, a process beside each worker, ended on a refusal raised out of its loop (its
    heartbeat's first write), and delayed jobs then waited for a lapsed lock or the worker's
    maintenance. It waits the refusal out: the same process moves the job once Redis takes writes."""
    conn = redis.Redis(port=server.port)
    consumer = processes.start("consumer_main.py", "--workers", "1", env=env_for(server))
    registered = wait_for(lambda: [conn.hget(key, "pid") for key in conn.scan_iter("rq:scheduler:*")], 30, "it")
    scheduler = psutil.Process(int(registered[0]))  # its worker's child, which records its pid
    delayed = run_cli(
        "producer_main.py", "--task", "sleep", "--param", "seconds=0.1", "--in", "2s", env=env_for(server)
    )
    assert delayed.returncode == 0, delayed.stderr
    (job_id,) = re.findall(r"^  ([0-9a-f-]{36})$", delayed.stdout, re.M)
    repair = break_persistence(conn)
    try:
        time.sleep(4)  # due meanwhile; the scheduler polls every second
        assert alive(scheduler) and conn.hget(f"rq:job:{job_id}", "status") == b"scheduled"
    finally:
        repair()
    wait_for(lambda: conn.hget(f"rq:job:{job_id}", "status") == b"finished", 30, "the delayed job to run")
    assert alive(scheduler)
    _, err = consumer.output()
    assert "Traceback" not in err and "raised an exception" not in err
    said = f"Scheduler [PID {scheduler.pid}] could not heartbeat: Redis is refusing writes (it cannot persist to disk"
    assert said in err and f"Scheduler [PID {scheduler.pid}]: Redis accepts work again" in err


#: Long enough for a dead worker's registration to lapse and a sweep to look at it.
SWEEP_WAIT = 13


def test_pool_rides_out_a_frozen_redis(server, processes) -> None:
    conn = redis.Redis(port=server.port)
    consumer = processes.start("consumer_main.py", "--workers", "2", env=env_for(server))
    wait_for(lambda: "2 workers: 0 busy, 2 idle" in consumer.output()[0], 30, "two idle workers")
    os.kill(server.process.pid, signal.SIGSTOP)  # accepts connections, answers nothing: timeouts
    try:
        wait_for(lambda: "Redis not answering (Timeout" in consumer.output()[0], 30, "the status line to say so")
        kill_a_worker_and_see_it_replaced(consumer)
        time.sleep(8)  # longer than redis-py's 5 s socket timeout
        assert consumer.poll() is None, consumer.output()
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    jobs = enqueue(conn, "sleep", 4, seconds=0.1)
    wait_for(lambda: all_finished(conn, jobs), 40, "every job to finish once Redis answers")
    assert consumer.poll() is None


def test_a_pool_that_fails_stops_its_workers_and_exits_1(server, tmp_path) -> None:
    """Anything the pool cannot survive (here, its status callback raising) ends it, workers first."""
    script = tmp_path / "failing_pool.py"
    script.write_text(
        "import sys, redis\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from workqueue.cli.common import run\n"
        "from workqueue.worker.pool import ConsumerPool\n"
        "import click\n"
        "ticks = []\n"
        "def on_tick(status):\n"
        "    ticks.append(status)\n"
        "    if len(ticks) == 6: raise RuntimeError('broken status callback')\n"
        "@click.command()\n"
        "def main():\n"
        f"    ConsumerPool(['queue_one'], redis.Redis(port={server.port}), 2, on_tick=on_tick).start()\n"
        "run(main)\n"
    )
    process = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    seen: list[psutil.Process] = []

    def workers() -> bool:
        seen[:] = descendants(process.pid)
        return len(seen) >= 2

    try:
        wait_for(workers, 20, "the workers")
        out, err = process.communicate(timeout=40)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    _gone, alive = psutil.wait_procs(seen, timeout=10)
    for leftover in alive:
        leftover.kill()
    assert process.returncode == 1 and not alive
    assert err.strip().splitlines()[-1].startswith("error: the consumer's pool failed (RuntimeError: broken status")


def test_the_classification_is_one_place() -> None:
    oom = redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")
    script = redis.ResponseError("Error running script (call to f_1): @user_script:1: @user_script: 1: -MISCONF Redis")
    piped = redis.ResponseError("Command # 1 (SET x BUSY) of pipeline caused error: READONLY You can't write")
    for exc, code in [
        (oom, "OOM"),
        (script, "MISCONF"),
        (piped, "READONLY"),
        (redis.exceptions.BusyLoadingError("Redis is loading"), "LOADING"),
    ]:
        assert outage.refusal(exc) == code and outage.is_outage(exc)
    assert outage.is_outage(redis.TimeoutError("Timeout reading from socket"))
    assert not outage.is_outage(redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind"))
    assert not outage.is_outage(redis.ResponseError("ERR unknown command 'BUSY'"))
    assert outage.describe(oom) == "Redis is refusing writes (out of memory: maxmemory reached)"


# -- item 8: the producer says a refused write in one line, and enqueues all or nothing ------------


@pytest.mark.parametrize(
    "fault, says",
    [(fill_memory, "out of memory: maxmemory reached"), (break_persistence, "it cannot persist to disk (MISCONF)")],
)
def test_producer_refused_by_redis_says_so_in_one_line(server, fault, says) -> None:
    conn = redis.Redis(port=server.port)
    repair = fault(conn)
    result = run_cli("producer_main.py", "--task", "sleep", "--count", "50", env=env_for(server))
    repair()
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr == f"error: Redis refused the write ({says}); nothing was enqueued\n"
    assert not conn.keys("rq:*")


# -- item 9: no silent loss --------------------------------------------------------------------


@pytest.mark.parametrize("config", [[], ["--rename-command", "CONFIG", ""]])
def test_commands_refuse_a_redis_that_evicts_keys(config) -> None:
    evicting = RedisServer("--maxmemory-policy", "allkeys-lru", *config)
    try:
        evicting.wait_ready()
        env = cli_env(REDIS_URL=evicting.url)
        for command in (["producer_main.py", "--task", "sleep"], ["consumer_main.py", "--workers", "1", "--burst"]):
            result = run_cli(*command, env=env, timeout=60)
            assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
            assert "maxmemory-policy allkeys-lru" in result.stderr
            assert "CONFIG SET maxmemory-policy noeviction" in result.stderr
        assert not redis.Redis(port=evicting.port).keys("rq:*")
    finally:
        evicting.stop()


def test_redis_restarted_empty_is_told_not_shown_as_empty_queues(server, processes) -> None:
    env = env_for(server)
    consumer = processes.start("consumer_main.py", "--workers", "1", "--queue", "elsewhere", env=env)
    waiting = processes.start("producer_main.py", "--task", "sleep", "--count", "2", "--wait", env=env)
    wait_for(lambda: "batch " in waiting.output()[0], 30, "the batch to be enqueued")
    wait_for(lambda: "1 workers: 0 busy, 1 idle" in consumer.output()[0], 30, "the consumer to start")
    server.restart(signal.SIGKILL)  # no persistence: it comes back empty
    assert waiting.wait(60) == 1
    out, err = waiting.output()
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith("error: Redis lost its data (restarted without persistence?)")
    wait_for(lambda: "Redis lost its data at " in consumer.output()[0], 30, "the consumer to say so")
    assert consumer.poll() is None
    unknown = run_cli("producer_main.py", "--batch", "abcdef123456", env=env)
    assert unknown.returncode == 2 and "this Redis holds workqueue data only since " in unknown.stderr
    assert "lost its data: restarted without persistence?" in unknown.stderr


def test_producer_wait_rides_out_an_outage(tmp_path, processes) -> None:
    server = RedisServer("--appendonly", "yes", "--appendfsync", "always")
    try:
        server.wait_ready()
        env = env_for(server)
        waiting = processes.start(
            "producer_main.py", "--task", "sleep", "--param", "seconds=0.1", "--count", "3", "--wait", env=env
        )
        wait_for(lambda: "batch " in waiting.output()[0], 30, "the batch to be enqueued")
        server.restart(signal.SIGKILL, down_for=4)  # its append-only log brings every job back
        wait_for(lambda: "Redis not answering" in waiting.output()[0], 30, "the producer to say so")
        processes.start("consumer_main.py", "--workers", "1", env=env)
        assert waiting.wait(60) == 0, waiting.output()
        out, err = waiting.output()
        assert "Traceback" not in err and "finished 3, failed 0 of 3" in out
    finally:
        processes.stop_all()
        server.stop()


def test_dashboard_answers_503_during_an_outage(server) -> None:
    from workqueue.dashboard import create_app

    app = create_app(server.url)
    client = app.test_client()
    assert client.get("/metrics").status_code == 200
    server.process.kill()
    server.process.wait(10)
    answer = client.get("/metrics")
    assert answer.status_code == 503 and "Redis not answering" in answer.get_json()["error"]


def test_the_python_apis_wait_rides_out_an_outage(processes) -> None:
    server = RedisServer("--appendonly", "yes", "--appendfsync", "always")
    try:
        server.wait_ready()
        batch = workqueue.enqueue("sleep", {"seconds": 0.1}, count=3, queue="api-outage", redis_url=server.url)
        said: list[str | None] = []
        ended: list[object] = []
        waiter = threading.Thread(target=lambda: ended.append(batch.wait(on_outage=said.append, timeout=90)))
        waiter.start()
        server.restart(signal.SIGKILL, down_for=4)  # its append-only log brings every job back
        processes.start("consumer_main.py", "--workers", "1", "--queue", "api-outage", env=env_for(server))
        waiter.join(120)
        assert not waiter.is_alive() and ended, "wait() did not return"
        (summary,) = ended
        assert (summary.finished, summary.failed) == (3, 0)
        assert said and said[0].startswith("Redis not answering") and said[-1] is None
    finally:
        processes.stop_all()
        server.stop()
