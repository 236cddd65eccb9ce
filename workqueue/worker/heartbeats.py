"""How a worker shows it is alive: RQ's heartbeat in one round trip, lapsing soon after the last
(a worker SIGKILLed or lost with its machine is noticed within seconds, see ``recovery.sweep``),
re-registering a worker that a sweep took for dead during an outage, and the heartbeat of a long
job, which finds a run whose job was handed back meanwhile and stops it."""

from __future__ import annotations

import signal
import time
from typing import Any

import redis
from rq import worker_registration
from rq.executions import WORKER_EXECUTIONS_KEY_TEMPLATE, Execution
from rq.job import Job
from rq.utils import now

from workqueue import limits, outage, rq_compat
from workqueue.guarded import note_superseded
from workqueue.settings import HEARTBEAT_INTERVAL, HEARTBEAT_MIN_GAP, HEARTBEAT_TTL
from workqueue.worker.stopping import StoppingWorker


class HeartbeatingWorker(StoppingWorker):
    """The worker's heartbeats (see the module); ``CatalogueWorker`` sets the state below."""

    _beaten_at: float
    _registered_at: float
    #: RQ's heartbeat right after a job is skipped once (``CatalogueWorker.execute_job``).
    _skip_beat: bool
    _superseded_run: str | None
    _handed_back_at: float | None

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> int | None:
        """RQ's heartbeat, in one round trip, lapsing HEARTBEAT_TTL seconds after the last one.

        It also re-registers the worker: if Redis was away longer than the TTL, a sweep may have
        unregistered this live worker, which would otherwise stay invisible to the dashboard and
        the kill scripts. Answers the index of the registration's reply in ``pipeline`` (None: not
        registered this time), for :meth:`_learn_if_declared_dead` once the caller ran it.
        """
        if pipeline is None and timeout is None and self._skip_beat:
            self._skip_beat = False
            return None  # RQ's, right after a job (see execute_job)
        if pipeline is None and timeout is None and time.monotonic() - self._beaten_at < HEARTBEAT_MIN_GAP:
            return None  # RQ heartbeats three times per job on its own; with a 10 s lapse one a second is plenty
        pipe = pipeline if pipeline is not None else self.connection.pipeline()
        # At most once per interval, not on every job's heartbeats: it only matters after an outage.
        registration = None
        if self.birth_date is not None and time.monotonic() - self._registered_at >= HEARTBEAT_INTERVAL:
            self._registered_at = time.monotonic()
            pipe.hset(self.key, mapping={**self.serialize(), "state": rq_compat.worker_state(self)})
            registration = len(pipe)  # the SADD to RQ's set of workers: 1 if a sweep had removed it
            worker_registration.register(self, pipe)
        super().heartbeat(min(timeout or HEARTBEAT_TTL, HEARTBEAT_TTL), pipe)
        if self.concurrency > 1:  # slots in use, for the dashboard and the consumer's status line
            pipe.hset(self.key, "slots", f"{len(self._running)}/{self.concurrency}")
        if pipeline is None:
            try:
                replies = pipe.execute()
            except redis.RedisError as exc:  # skipped: the dequeue that follows waits the outage out
                if not outage.is_outage(exc):
                    raise
                self.log.debug("Worker %s: heartbeat skipped: %s", self.name, outage.describe(exc))
                return None
            self._beaten_at = time.monotonic()
            self._learn_if_declared_dead(replies, registration)
        return registration

    def _learn_if_declared_dead(self, replies: list[Any], registration: int | None) -> None:
        """Say so when this worker's heartbeat finds that it had been unregistered: Redis heard
        nothing from it for HEARTBEAT_TTL seconds (a network cut, a frozen host, a long outage), a
        sweep took it for dead and handed its jobs back. It is registered again by this heartbeat;
        a run of a handed-back job still going on here is stopped (:meth:`_maintain_heartbeats`)."""
        if registration is not None and replies[registration] == 1:
            self.log.warning(
                "Worker %s: declared dead while Redis heard nothing from it (over %d s without a heartbeat); "
                "the jobs it was running were handed back to other workers; registered again",
                self.name,
                HEARTBEAT_TTL,
            )

    def maintain_heartbeats(self, job: Job, execution: Execution) -> None:
        """RQ's heartbeat during a long job, but the worker's registration still lapses HEARTBEAT_TTL
        after it: RQ gives a worker hash it finds gone a lifetime of a minute, so a worker killed
        then would keep its job waiting that long (our heartbeat re-registers it instead)."""
        try:
            self._maintain_heartbeats(job, execution)
        except redis.RedisError as exc:  # the job runs on; its end is recorded once Redis takes it
            if not outage.is_outage(exc):
                raise
            self.stop_at_once_if_orphaned()
            self.log.warning("Worker %s: heartbeat of job %s skipped: %s", self.name, job.id, outage.describe(exc))

    def _maintain_heartbeats(self, job: Job, execution: Execution) -> None:
        with self.connection.pipeline() as pipeline:
            registration = self.heartbeat(HEARTBEAT_TTL, pipeline=pipeline)
            working = (now() - job.started_at).total_seconds() if job.started_at else 0.0
            ttl = int(self.get_heartbeat_ttl(job, working_time=working))
            execution.heartbeat(job.started_job_registry, ttl, pipeline=pipeline)
            limit_key = limits.job_key(job)
            if limit_key:  # its concurrency lease lasts as long as its heartbeat
                limits.queue_extend(pipeline, limit_key, job.id, execution.id, ttl)
            holds = len(pipeline)  # this run still holds the job: its execution is in the started registry
            pipeline.zscore(job.started_job_registry.key, f"{job.id}:{execution.id}")
            index = len(pipeline)
            job.heartbeat(now(), ttl, pipeline=pipeline, xx=True)
            replies = pipeline.execute()
            # A new field: the job was deleted meanwhile (rq#1450), and the heartbeat made a hash of it
            # alone, deleted as RQ does; unless the job has other fields (a finished job, kept without
            # its heartbeat by jobs.keep_result, that a resumed worker's late heartbeat reached).
            if replies[index] == 1 and self.connection.hlen(job.key) == 1:
                self.connection.delete(job.key)
        self._learn_if_declared_dead(replies, registration)
        if replies[holds] is None and self._handed_back_at is None:  # see _watch_horse
            self._handed_back_at = time.monotonic()

    def _stop_superseded_run(self, job: Job, execution: Execution) -> None:
        """This run's job was handed back (its worker taken for dead, or its execution otherwise
        removed): another worker runs it, or has. Its horse is killed, so the job does not run
        on here; :meth:`_horse_died` then records nothing but a note (``meta["superseded"]``)."""
        self.log.warning(
            "Worker %s: job %s was handed back to other workers meanwhile; stopping this run of it", self.name, job.id
        )
        self._superseded_run = execution.id
        self.kill_horse(signal.SIGKILL)

    def _forget_superseded_run(self, job: Job, execution: Execution) -> None:
        """What is left of a run stopped by :meth:`_stop_superseded_run`: its heartbeat may have
        written its execution's hash again; the note says that this run ended without an outcome."""
        self._superseded_run = self._handed_back_at = None
        with self.connection.pipeline() as pipe:
            pipe.delete(execution.key)
            pipe.srem(WORKER_EXECUTIONS_KEY_TEMPLATE.format(self.name), f"{job.id}:{execution.id}")
            pipe.execute()
        note_superseded(self.connection, job.id, execution.id, self.name, "stopped: the job had been handed back")
