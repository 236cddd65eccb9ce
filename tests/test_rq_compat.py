"""The fence around RQ's private names: each one works on the pinned RQ, each override still overrides
something, another RQ release is refused in one line, and no other module names them."""

from __future__ import annotations

import importlib
import inspect
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from rq import Queue, Worker
from rq.callbacks import Callback
from rq.executions import Execution
from rq.job import JobStatus
from rq.registry import FailedJobRegistry
from rq.worker_pool import WorkerPool

from workqueue import batches, rq_compat
from workqueue.jobs import SERIALIZER, CatalogueJob

ROOT = Path(__file__).resolve().parent.parent


def _queue(conn, name: str = "compat") -> Queue:
    return Queue(name, connection=conn, serializer=SERIALIZER, job_class=CatalogueJob)


def _job(conn, queue: Queue, **kwargs):
    return queue.enqueue("task_def.maths.primes", kwargs={"n": 0}, **kwargs)


@pytest.fixture
def signals():
    """Restores the handlers a test installs."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_the_job_names_read_and_write_what_rq_reads_and_writes(conn) -> None:
    conn.flushdb()
    queue = _queue(conn)
    job = _job(
        conn,
        queue,
        on_success=Callback(batches.ON_SUCCESS),
        on_failure=Callback(batches.ON_FAILURE),
        on_stopped=Callback(batches.ON_STOPPED),
    )
    assert (
        rq_compat.success_callback_name(job),
        rq_compat.failure_callback_name(job),
        rq_compat.stopped_callback_name(job),
    ) == (batches.ON_SUCCESS, batches.ON_FAILURE, batches.ON_STOPPED)
    rq_compat.set_job_status(job, JobStatus.STARTED)
    assert job.get_status(refresh=False) == JobStatus.STARTED
    assert job.get_status(refresh=True) == JobStatus.QUEUED  # memory only
    rq_compat.set_job_result(job, {"answer": 42})
    assert rq_compat.job_result(job) == {"answer": 42}
    job.meta["note"] = "x"
    assert SERIALIZER.loads(rq_compat.serialized_meta(job)) == {"note": "x"}

    conn.delete(queue.key)
    with conn.pipeline() as pipe:
        rq_compat.enqueue_job(queue, job, pipeline=pipe, at_front=True)
        pipe.execute()
    assert queue.job_ids == [job.id]
    with conn.pipeline() as pipe:
        rq_compat.handle_job_failure(job, "boom", pipe, worker_name="w")
        pipe.execute()
    assert job.id in FailedJobRegistry(queue.name, connection=conn, serializer=SERIALIZER)

    execution = Execution("e1", job.id, conn)
    rq_compat.set_execution_job(execution, job)
    assert execution.job is job


def test_the_worker_names_read_and_write_what_rq_reads_and_writes(conn) -> None:
    conn.flushdb()
    queue = _queue(conn)
    worker = Worker([queue], connection=conn, name="compat-worker", serializer=SERIALIZER, job_class=CatalogueJob)
    assert [q.name for q in rq_compat.ordered_queues(worker)] == ["compat"]
    worker.set_state("idle")
    assert rq_compat.worker_state(worker) == "idle"
    rq_compat.set_worker_state(worker, "busy")
    assert worker.get_state() == "busy"
    assert rq_compat.stop_requested(worker) is False
    worker.request_stop(signal.SIGINT, None)
    assert rq_compat.stop_requested(worker) is True
    assert rq_compat.stopped_job_id(worker) is None
    worker._stopped_job_id = "some-job"  # as RQ's stop-job command sets it
    assert rq_compat.stopped_job_id(worker) == "some-job"
    rq_compat.clear_stopped_job(worker)
    assert rq_compat.stopped_job_id(worker) is None
    rq_compat.set_horse_pid(worker, 1234)
    assert worker.horse_pid == 1234
    assert rq_compat.is_horse(worker) is False
    rq_compat.mark_horse(worker)
    assert rq_compat.is_horse(worker) is True


def _start(conn, worker: Worker, job) -> Execution:
    with conn.pipeline() as pipe:
        job.prepare_for_execution(worker.name, pipe)
        execution = Execution.create(job, 60, pipeline=pipe, worker_name=worker.name)
        pipe.execute()
    worker.executions[execution.id] = execution
    return execution


def test_a_job_ends_through_rq_own_steps(conn) -> None:
    conn.flushdb()
    queue = _queue(conn)
    worker = Worker([queue], connection=conn, name="compat-ender", serializer=SERIALIZER, job_class=CatalogueJob)
    worker.register_birth()
    parent = _job(conn, queue)
    child = _job(conn, queue, depends_on=parent)
    assert child.get_status() == JobStatus.DEFERRED
    conn.delete(queue.key)
    execution = _start(conn, worker, parent)
    parent.ended_at = parent.started_at
    rq_compat.finalize_success(worker, parent, queue, execution, 7)
    assert parent.get_status(refresh=True) == JobStatus.FINISHED and parent.return_value() == 7
    assert child.get_status(refresh=True) == JobStatus.QUEUED  # RQ enqueued the dependent
    rq_compat.enqueue_dependents_safely(worker, queue, parent)  # again: nothing left to do, no error
    rq_compat.release_slot_safely(worker, parent)

    stopped = _job(conn, queue)
    execution = _start(conn, worker, stopped)
    worker._stopped_job_id = stopped.id  # as RQ's stop-job command sets it
    rq_compat.handle_stopped_job(worker, stopped, queue, execution)
    assert stopped.get_status(refresh=True) == JobStatus.STOPPED
    assert stopped.id in FailedJobRegistry(queue.name, connection=conn, serializer=SERIALIZER)


def test_the_pool_and_scheduler_names(conn, signals) -> None:
    pool = WorkerPool(["compat", "other"], connection=conn, num_workers=1)
    assert rq_compat.pool_queue_names(pool) == ["compat", "other"]
    rq_compat.set_pool_burst(pool, False)
    assert rq_compat.pool_burst(pool) is False
    args, kwargs = rq_compat.process_arguments(pool.get_worker_process("compat-pool.w1", burst=True))
    assert args[0] == "compat-pool.w1" and "burst" in kwargs
    rq_compat.install_pool_signal_handlers(pool)
    assert signal.getsignal(signal.SIGTERM) == pool.request_stop

    from rq.scheduler import RQScheduler

    scheduler = RQScheduler(["compat"], connection=conn)
    rq_compat.scheduler_signal_handlers(scheduler)
    assert signal.getsignal(signal.SIGTERM) == scheduler.request_stop


def test_install_keeps_each_serializer_lookup_and_is_idempotent() -> None:
    code = (
        "import rq.job, rq.queue, rq.registry, rq.results, rq.serializers as s\n"
        "from workqueue import rq_compat\n"
        "rq_compat.install(); first = rq.job.resolve_serializer; rq_compat.install()\n"
        "assert all(m.resolve_serializer is first for m in (rq.job, rq.queue, rq.registry, rq.results))\n"
        "assert first is not s.resolve_serializer and first(s.JSONSerializer) is first(s.JSONSerializer)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("cls_path, name, params", rq_compat.OVERRIDDEN)
def test_every_private_method_we_override_still_exists_with_the_parameters_we_rely_on(cls_path, name, params) -> None:
    module, _, cls_name = cls_path.rpartition(".")
    method = getattr(getattr(importlib.import_module(module), cls_name), name)
    assert tuple(inspect.signature(method).parameters)[: len(params)] == params


@pytest.mark.parametrize("version", ["9.9.9", "2.10.0"])
def test_another_rq_release_is_refused_in_one_line(version) -> None:
    code = f"import rq; rq.__version__ = rq.VERSION = {version!r}; import workqueue.rq_compat"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    major_minor = ".".join(version.split(".")[:2])
    assert done.stderr.strip().splitlines()[-1] == (
        f"ImportError: workqueue supports RQ 3.0.x; this is RQ {major_minor} ({version}): pip install 'rq==3.0.*'"
    )


def test_no_other_module_names_a_private_rq_name() -> None:
    # An attribute ``._name`` or a method ``def _name`` (a module's own functions are its own), but the
    # overrides listed in OVERRIDDEN.
    overridden = {name for _, name, _ in rq_compat.OVERRIDDEN}
    found = []
    for path in sorted([*(ROOT / "workqueue").rglob("*.py"), *(ROOT / "task_def").rglob("*.py")]):
        if path.name == "rq_compat.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for name in rq_compat.PRIVATE_NAMES:
                for match in re.finditer(rf"(^\s+def |\.){name}\b", line):
                    if not (match.group(1).strip() == "def" and name in overridden):
                        found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found == []
