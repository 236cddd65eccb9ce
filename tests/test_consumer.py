"""The consumer command with real worker processes: draining, naming, refusing, signals, prompts."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import time
from pathlib import Path

import pytest
import redis
from rq import Queue
from rq.job import Job

from tests.helpers import Processes, child_pids, cli_env, run_cli, status, wait_for
from workqueue import producer
from workqueue.jobs import SERIALIZER, CatalogueJob


def enqueue(conn: redis.Redis, task: str, count: int = 1, queue: str = "queue_one", **params) -> list[Job]:
    return producer.enqueue(conn, [producer.TaskCall.build(task, params)] * count, queue).jobs


def error_of(conn: redis.Redis, job: Job) -> str:
    return Job.fetch(job.id, connection=conn, serializer=SERIALIZER).latest_result().exc_string


def test_burst_drains_the_queue_with_named_workers_and_exits_0(conn: redis.Redis) -> None:
    jobs = enqueue(conn, "sleep", 6, seconds=0.2) + enqueue(conn, "primes", n=100_000)
    result = run_cli("consumer_main.py", "--workers", "3", "--burst")
    assert result.returncode == 0, result.stderr
    assert [status(conn, job) for job in jobs] == ["finished"] * 7
    names = re.search(r"workers: (.*)", result.stdout).group(1).split(", ")
    assert len(names) == 3 and all(re.fullmatch(r".+\.\d+\.w[123]", n) for n in names)
    assert "stopped: done 7, failed 0, queued 0" in result.stdout
    assert CatalogueJob.fetch(jobs[-1].id, connection=conn, serializer=SERIALIZER).return_value() == {
        "n": 100_000,
        "primes": 9592,
    }


def test_consumer_serves_several_queues(conn: redis.Redis) -> None:
    a, b = enqueue(conn, "sleep", queue="a", seconds=0.1), enqueue(conn, "sleep", queue="b", seconds=0.1)
    result = run_cli("consumer_main.py", "--workers", "1", "--queue", "a", "--queue", "b", "--burst")
    assert result.returncode == 0 and status(conn, a[0]) == status(conn, b[0]) == "finished"


def test_job_naming_a_function_outside_the_catalogue_is_refused_and_never_run(
    conn: redis.Redis, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    q = Queue("queue_one", connection=conn, serializer=SERIALIZER)
    foreign = q.enqueue("os.system", f"touch {marker}")
    callback = q.enqueue("task_def.sleep.sleep", kwargs={"seconds": 0.1}, on_success="os.getcwd")
    positional = q.enqueue("task_def.sleep.sleep", 0.1)
    too_long = q.enqueue("task_def.sleep.sleep", kwargs={"seconds": 99999})
    result = run_cli("consumer_main.py", "--workers", "1", "--burst")
    assert result.returncode == 0
    assert not marker.exists()
    assert "refused: 'os.system' is not a task in the task_def catalogue" in error_of(conn, foreign)
    assert "refused: callback 'os.getcwd' is not an allowed workqueue callback" in error_of(conn, callback)
    assert "keyword parameters only" in error_of(conn, positional)
    assert "seconds: 99999 is out of bounds" in error_of(conn, too_long)
    assert {status(conn, j) for j in (foreign, callback, positional, too_long)} == {"failed"}


@pytest.mark.slow
def test_running_job_stores_its_progress_for_the_producer_and_dashboard(
    conn: redis.Redis, processes: Processes
) -> None:
    (job,) = enqueue(conn, "sleep", seconds=3)
    processes.start("consumer_main.py", "--workers", "1")

    def progress() -> dict:
        meta = Job.fetch(job.id, connection=conn, serializer=SERIALIZER).get_meta()
        p = meta.get("progress") or {}
        return p if 0 < (p.get("percent") or 0) < 100 else {}

    seen = wait_for(progress, 10, "progress between 0 and 100 %")
    assert seen["total"] == 3 and seen["message"] == "sleeping"
    wait_for(lambda: status(conn, job) == "finished", 10, "the job to finish")
    assert Job.fetch(job.id, connection=conn, serializer=SERIALIZER).get_meta()["progress"]["percent"] == 100


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_gracefully_after_the_current_job(conn: redis.Redis, processes: Processes, sig: int) -> None:
    (job,) = enqueue(conn, "sleep", seconds=2)
    consumer = processes.start("consumer_main.py", "--workers", "2")
    wait_for(lambda: status(conn, job) == "started", 15, "the job to start")
    consumer.send_signal(sig)
    out, err = consumer.communicate(timeout=30)
    assert consumer.returncode == 0, err
    assert status(conn, job) == "finished"
    assert "stopping" in out and "stopped: done 1, failed 0" in out


def test_second_signal_stops_at_once(conn: redis.Redis, processes: Processes) -> None:
    (job,) = enqueue(conn, "sleep", seconds=120)
    consumer = processes.start("consumer_main.py", "--workers", "1")
    wait_for(lambda: status(conn, job) == "started", 15, "the job to start")
    started = time.monotonic()
    consumer.send_signal(signal.SIGINT)
    time.sleep(0.3)
    consumer.send_signal(signal.SIGINT)
    consumer.communicate(timeout=30)
    assert time.monotonic() - started < 10
    assert consumer.returncode == 0
    assert not conn.smembers("rq:workers")


def test_ctrl_c_while_the_workers_start_stops_every_one_cleanly(
    conn: redis.Redis, processes: Processes, tmp_path: Path
) -> None:
    """A Ctrl-C may come at any moment of a worker's start-up: just forked (still running the pool's
    handlers), or while it forks its scheduler, before RQ's handlers are in place. Here every fork
    takes a second on each side (a ``sitecustomize`` sleeps after it: a slow, loaded machine), and
    the Ctrl-C comes as the second worker is forked, in both of those moments at once."""
    (tmp_path / "sitecustomize.py").write_text(
        "import os, time\n"
        "os.register_at_fork(after_in_parent=lambda: time.sleep(1), after_in_child=lambda: time.sleep(1))\n"
    )
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    consumer = processes.start("consumer_main.py", "--workers", "2", env=cli_env(PYTHONPATH=path))
    wait_for(lambda: len(child_pids(consumer)) == 2, 30, "the second worker to be forked")
    consumer.send_signal(signal.SIGINT)
    out, err = consumer.communicate(timeout=60)
    assert consumer.returncode == 0, err
    assert "Traceback" not in out + err and "stopped: done 0, failed 0" in out
    assert not conn.smembers("rq:workers")  # each worker ran its teardown: none left registered


def test_a_consumer_woken_by_signal_after_signal_still_stops_on_ctrl_c(conn: redis.Redis, processes: Processes) -> None:
    """The pool's loop is woken by signals (a worker's exit: SIGCHLD; a stop), whose handlers run
    between any two steps of the loop, also while it holds a lock of its own: a handler that took
    that lock (threading.Event.set) waited forever, and the consumer never exited. SIGCHLD after
    SIGCHLD for 3 s lands in every step of the loop (a stuck handler then shows as handlers nested
    until Python's recursion limit)."""
    consumer = processes.start("consumer_main.py", "--workers", "1")
    wait_for(lambda: "1 workers:" in consumer.output()[0], 30, "the pool's first status line")
    end = time.monotonic() + 3
    while time.monotonic() < end:
        os.kill(consumer.pid, signal.SIGCHLD)
    consumer.send_signal(signal.SIGINT)
    out, err = consumer.communicate(timeout=30)
    assert consumer.returncode == 0 and "Traceback" not in err, err
    assert "stopped: done 0, failed 0" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--workers", "0"], "'--workers': 0 is not in the range 1<=x<=10"),
        (["--workers", "11"], "'--workers': 11 is not in the range 1<=x<=10"),
        (["--workers", "abc"], "'--workers': 'abc' is not a valid integer"),
        (["--queue", "queue_one"], "missing --workers N"),
        ([], "missing --workers N"),
        (["--workers", "2", "--queue", "a,b"], "invalid queue name 'a,b'"),
        (["--workers", "2", "--queue", " "], "invalid queue name ' '"),
    ],
)
def test_bad_flags_are_one_line_exit_2(redis_url: str, args: list, message: str) -> None:
    result = run_cli("consumer_main.py", *args, timeout=30)
    assert result.returncode == 2 and message in result.stderr and result.stderr.count("\n") == 1


def test_unreachable_redis_is_exit_1() -> None:
    result = run_cli("consumer_main.py", "--workers", "1", "--redis-url", "redis://127.0.0.1:1/0", timeout=30)
    assert result.returncode == 1 and "cannot reach Redis at redis://127.0.0.1:1/0" in result.stderr


def test_prompts_at_a_terminal_reask_until_valid(conn: redis.Redis, processes: Processes) -> None:
    master, slave = pty.openpty()
    consumer = processes.start("consumer_main.py", stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    output = b""

    def read_until(text: bytes, timeout: float = 20) -> None:
        nonlocal output
        deadline = time.monotonic() + timeout
        while text not in output:
            assert time.monotonic() < deadline, f"no {text!r} in {output!r}"
            if select.select([master], [], [], 0.2)[0]:
                output += os.read(master, 4096)

    for answer in (b"0", b"11", b"abc", b"2"):
        read_until(b"How many workers")
        output = output.replace(b"How many workers", b"", 1) if answer != b"2" else output
        os.write(master, answer + b"\n")
    read_until(b"Queue(s)")
    os.write(master, b"bad name!\n")
    read_until(b"invalid queue name")
    os.write(master, b"queue_one, second\n")
    read_until(b"2 workers:")
    assert b"0 is not in the range" in output and b"'abc' is not a valid integer" in output
    consumer.send_signal(signal.SIGINT)
    # Read on as a terminal does until it exits: a pty nobody reads fills (~19 KB) and stops its writers.
    deadline = time.monotonic() + 30
    while consumer.poll() is None and time.monotonic() < deadline:
        if select.select([master], [], [], 0.2)[0]:
            try:
                output += os.read(master, 4096)
            except OSError:  # EIO: every process holding the terminal has gone
                break
    assert consumer.wait(max(0.0, deadline - time.monotonic())) == 0, output
    assert b"Traceback" not in output and b"stopped: done 0, failed 0" in output, output
    os.close(master)


@pytest.mark.slow
def test_producer_wait_shows_summary_and_exit_code(conn: redis.Redis, processes: Processes) -> None:
    processes.start("consumer_main.py", "--workers", "2")
    ok = run_cli("producer_main.py", "--task", "sleep", "--param", "seconds=0.3", "--count", "4", "--wait")
    assert ok.returncode == 0, ok.stderr
    assert re.search(r"finished 4, failed 0 of 4 in \d+\.\d\d s", ok.stdout)
    bad = run_cli("producer_main.py", "--task", "scrape", "--param", "url=http://127.0.0.1:1/", "--wait")
    assert bad.returncode == 1
    assert "finished 0, failed 1 of 1" in bad.stdout and "ConnectError" in bad.stdout
