"""A job a dead worker moved out of its queue (its BLMOVE answered, the worker gone, or cut off)
is put back by the sweep; a worker may take it at once. Found by tests/test_hosts.py, where it
struck one run in five: the sweep forgot the dead worker's runs of the job after putting it back,
so it forgot the new worker's run too, whose end was then refused as superseded, and the job stayed
"started" with no run to finish or recover it. Here the interleaving is forced: a real worker
claims the job right after the sweep's requeue, before the sweep's next command."""

from __future__ import annotations

from typing import Any

import redis
from rq import Queue

from tests.helpers import enqueue_jobs
from workqueue import recovery
from workqueue.jobs import SERIALIZER
from workqueue.worker import job_steps
from workqueue.worker.catalogue_worker import CatalogueWorker


def test_a_rescued_job_taken_at_once_keeps_its_new_run(conn: redis.Redis) -> None:
    job = enqueue_jobs(conn, count=1, seconds=1)[0]
    queue = Queue("queue_one", connection=conn, serializer=SERIALIZER)
    assert conn.lmove(queue.key, queue.intermediate_queue_key) == job.id.encode()  # a worker's BLMOVE; it is gone
    assert recovery.sweep(conn)[1] == []  # first sighting: left for a live worker to start
    worker = CatalogueWorker(["queue_one"], connection=conn, name="quick.1")
    worker.register_birth()
    claimed: list[Any] = []

    class ClaimRightAfter(redis.Redis):
        """The sweep's connection; right after its requeue, a worker takes the job."""

        def eval(self, script: str, numkeys: int, *args: Any) -> Any:
            reply = super().eval(script, numkeys, *args)
            if script == recovery._REQUEUE_IF_STILL_THERE and reply == 1:
                claimed.append(job_steps.claim(worker, [queue]))
            return reply

    handed = recovery.sweep(ClaimRightAfter(connection_pool=conn.connection_pool))[1]
    assert [h.outcome for h in handed] == [recovery.REQUEUED]
    (run,) = claimed
    assert run.job is not None and run.job.id == job.id and run.execution is not None
    assert conn.zscore(queue.started_job_registry.key, f"{job.id}:{run.execution.id}") is not None  # still held
    assert conn.hget(job.key, "status") == b"started"
    assert conn.llen(queue.intermediate_queue_key) == 0 and conn.llen(queue.key) == 0
