"""Recovery's decisions in-process, against a real redis-server and with no worker processes:
who is dead (``local_worker_gone`` with a live, a dead and a reused pid, another host's worker;
the sweep's verdict on registered workers) and what becomes of a dead run's job (back to the
front of its queue using a retry, failed when none is left, a deliberate stop using none, a run
handed back once). (The same with real processes, SIGKILL and concurrent sweeps: test_recovery.py,
test_kill.py and test_faults.py.)"""

from __future__ import annotations

import socket
import subprocess
from datetime import UTC, datetime

import psutil
import redis
from rq import Queue, Worker
from rq.executions import ExecutionRegistry
from rq.job import Job

from tests.helpers import start_by_a_dead_worker
from workqueue import producer, recovery
from workqueue.jobs import SERIALIZER

HERE = socket.gethostname().encode()
#: When this test process started (epoch seconds): a worker with this pid was born after it, or,
#: if its registration says it was born long before, the pid has been reused since.
STARTED = psutil.Process().create_time()


def birth(at: float) -> bytes:
    """A worker's ``birth`` field as RQ writes it."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode()


def dead_pid() -> int:
    """The pid of a process that has just ended (and been reaped)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def register(conn: redis.Redis, name: str, **fields: bytes | str | int) -> str:
    """A worker's registration as RQ leaves it (the hash, and its key in the set of workers)."""
    key = Worker.redis_worker_namespace_prefix + name
    if fields:
        conn.hset(key, mapping=fields)
    conn.sadd(Worker.redis_workers_keys, key)
    return key


def enqueue(conn: redis.Redis, retries: int, task: str = "sleep") -> str:
    call = producer.TaskCall.build(task, {"seconds": 1}, retries=retries)
    return producer.enqueue(conn, [call], "queue_one").jobs[0].id


def fetch(conn: redis.Redis, job_id: str) -> Job:
    return Job.fetch(job_id, connection=conn, serializer=SERIALIZER)


def queued(conn: redis.Redis) -> list[str]:
    return Queue("queue_one", connection=conn).job_ids


# -- who is dead --------------------------------------------------------------------------------


def test_a_live_process_born_before_its_worker_registered_is_not_gone() -> None:
    pid = str(psutil.Process().pid).encode()
    assert not recovery.local_worker_gone(HERE, pid, birth(STARTED + 1))
    assert not recovery.local_worker_gone(HERE, pid, birth(STARTED - 1))  # within the start-up grace


def test_a_dead_pid_on_this_host_is_gone() -> None:
    assert recovery.local_worker_gone(HERE, str(dead_pid()).encode(), birth(STARTED))


def test_a_pid_reused_by_a_process_started_after_the_workers_birth_is_gone() -> None:
    assert recovery.local_worker_gone(HERE, str(psutil.Process().pid).encode(), birth(STARTED - 3600))


def test_another_hosts_worker_is_left_to_its_registrations_lapse() -> None:
    assert not recovery.local_worker_gone(b"another-host", str(dead_pid()).encode(), birth(STARTED))


def test_a_registration_that_cannot_be_read_is_never_taken_for_dead() -> None:
    pid = str(psutil.Process().pid).encode()
    assert not recovery.local_worker_gone(None, str(dead_pid()).encode(), birth(STARTED))
    assert not recovery.local_worker_gone(HERE, None, birth(STARTED))
    assert not recovery.local_worker_gone(HERE, b"not-a-pid", birth(STARTED))
    assert not recovery.local_worker_gone(HERE, pid, b"not a date")
    assert not recovery.local_worker_gone(HERE, pid, None)


def test_the_sweep_removes_lapsed_and_locally_gone_workers_and_keeps_the_others(conn) -> None:
    lapsed = register(conn, "lapsed")
    gone = register(conn, "gone-here", hostname=HERE, pid=dead_pid(), birth=birth(STARTED))
    alive = register(conn, "alive-here", hostname=HERE, pid=psutil.Process().pid, birth=birth(STARTED + 1))
    elsewhere = register(conn, "elsewhere", hostname=b"another-host", pid=dead_pid(), birth=birth(STARTED))
    quit_ = register(conn, "quit-here", hostname=HERE, pid=dead_pid(), birth=birth(STARTED), death=birth(STARTED))
    dead, handed = recovery.sweep(conn)
    assert sorted(dead) == ["gone-here", "lapsed"] and handed == []
    assert {k.decode() for k in conn.smembers(Worker.redis_workers_keys)} == {alive, elsewhere, quit_}
    assert not conn.exists(gone) and not conn.exists(lapsed)


# -- what becomes of a dead run's job -----------------------------------------------------------


def test_a_dead_workers_job_goes_back_to_the_front_using_one_retry(conn) -> None:
    job_id = enqueue(conn, retries=1)
    owner = start_by_a_dead_worker(conn, 1)
    behind = enqueue(conn, retries=1)
    _dead, handed = recovery.sweep(conn)
    assert [(h.job_id, h.outcome) for h in handed] == [(job_id, recovery.REQUEUED)]
    assert owner in handed[0].reason and "died" in handed[0].reason
    assert queued(conn) == [job_id, behind]
    job = fetch(conn, job_id)
    assert job.get_status().value == "queued" and job.retries_left == 0
    assert [i["worker"] for i in job.meta["interruptions"]] == [owner]
    assert [a["worker"] for a in job.meta["attempts"]] == [owner]


def test_a_dead_workers_job_with_no_retries_left_fails_saying_why(conn) -> None:
    job_id = enqueue(conn, retries=0)
    start_by_a_dead_worker(conn, 1)
    _dead, handed = recovery.sweep(conn)
    assert [(h.job_id, h.outcome) for h in handed] == [(job_id, recovery.FAILED)]
    job = fetch(conn, job_id)
    assert job.get_status().value == "failed" and "not re-run: no retries left" in job.latest_result().exc_string
    assert queued(conn) == [] and job_id in Queue("queue_one", connection=conn).failed_job_registry


def test_a_deliberate_stop_hands_the_job_back_without_using_a_retry(conn) -> None:
    job_id = enqueue(conn, retries=1)
    owner = start_by_a_dead_worker(conn, 1)
    outcome = recovery.hand_back(conn, job_id, "stopped by kill_workers --now", owner)
    assert outcome.outcome == recovery.REQUEUED and outcome.describe().endswith("put back at the front of queue_one")
    job = fetch(conn, job_id)
    assert job.retries_left == 1 and "attempts" not in job.meta
    assert queued(conn) == [job_id]


def test_a_dead_run_is_handed_back_once_however_often_it_is_found(conn) -> None:
    job_id = enqueue(conn, retries=2)
    owner = start_by_a_dead_worker(conn, 1)
    runs = [e.decode() for e in conn.zrange(ExecutionRegistry.key_template.format(job_id), 0, -1)]
    first = recovery.hand_back(conn, job_id, "worker died", owner, attempt=True, execution_ids=runs)
    again = recovery.hand_back(conn, job_id, "worker died", owner, attempt=True, execution_ids=runs)
    assert (first.outcome, again.outcome) == (recovery.REQUEUED, recovery.ALREADY_ENDED)
    assert again.describe() == f"job {job_id} had already ended"
    assert queued(conn) == [job_id] and fetch(conn, job_id).retries_left == 1
    assert recovery.sweep(conn) == ([], [])


def test_a_job_that_ended_or_never_ran_is_already_ended(conn) -> None:
    job_id = enqueue(conn, retries=1)
    assert recovery.hand_back(conn, job_id, "worker died", "w", attempt=True).outcome == recovery.ALREADY_ENDED
    assert recovery.hand_back(conn, "no-such-job", "worker died", "w").outcome == recovery.ALREADY_ENDED
    assert queued(conn) == [job_id] and fetch(conn, job_id).retries_left == 1
