"""A worker whose horse runs several jobs at once (``consumer_main.py --concurrency N``): the
worker keeps claiming while slots are free (one claim for all of them), hands each job to the horse,
which runs it in a thread of its own, and watches them all: each job's answer, timeout, stop and
heartbeat, and the horse's death, which hands back the jobs it ran (``RunningJob``)."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis
from rq import Queue
from rq.exceptions import StopRequested
from rq.executions import Execution
from rq.job import Job
from rq.utils import now

from workqueue import limits, outage, pausing, recovery, rq_compat
from workqueue.settings import HARD_KILL_GRACE, HEARTBEAT_TTL
from workqueue.worker import job_steps
from workqueue.worker.claiming import ClaimingWorker
from workqueue.worker.horse import WAITING, Horse

#: What the watch of a horse running several jobs returns when its wait in a queue brought a job.
CLAIMED_IN_WAIT = object()


@dataclass
class RunningJob:
    """A job the horse runs beside others (``--concurrency``), as the worker watches it."""

    job: Job
    queue: Queue
    execution: Execution
    #: When (monotonic) a job that ignored its timeout's exception has its horse killed (None: no timeout).
    hard_deadline: float | None
    #: When a stop was sent to it (a stop-job command, or its run superseded): killed HARD_KILL_GRACE later.
    stop_sent_at: float | None = None
    superseded: bool = False
    #: A heartbeat found it handed back (its execution gone from the started registry) at this time.
    handed_back_at: float | None = None
    #: Why the worker killed the horse for this job: "timeout", "stopped" or "superseded" ('' if not).
    killed_for: str = ""


class SlotsWorker(ClaimingWorker):
    """The part of the worker that runs several jobs at once in its horse (see the module); the
    worker (``CatalogueWorker``) sets the state below and handles one job at a time itself."""

    _horse: Horse | None
    #: The jobs the horse runs, by id.
    _running: dict[str, RunningJob]
    _retire_when_drained: bool
    _jobs_beaten_at: float
    _superseded_run: str | None

    if TYPE_CHECKING:  # the worker's (CatalogueWorker), shared with one job at a time

        def _horse_ended(
            self, job: Job, queue: Queue, execution: Execution, retpid: int, ret_val: int, rusage: Any
        ) -> None: ...

        def _learn_if_declared_dead(self, replies: list[Any], registration: int | None) -> None: ...

        def _retire_horse(self) -> None: ...

    def _run_concurrently(self, job: Job, queue: Queue) -> None:
        """Run ``job`` in the horse, and while it runs fill the free slots: claim up to that many
        more jobs in one round trip (``job_steps.claim_many``) at once when a job ends, else every
        ``idle_look_gap`` seconds; answers are collected as they come (a select on the horse's pipe,
        never a busy loop) and every running job is heartbeaten. Returns once none runs, so a warm
        stop (which stops the claiming) lets every running job finish first.

        Each job keeps its timeout (raised in its thread; a job that ignores it HARD_KILL_GRACE past
        it has its horse killed), its stop (:meth:`_stop_running`), its progress, and its
        hand-back: a horse that dies hands back every job it ran (:meth:`_horse_died_running`)."""
        running = self._running
        try:
            self._launch(job, queue)
            look_at = 0.0
            while running:
                free = self.concurrency - len(running)
                now_ = time.monotonic()
                if (
                    free > 0
                    and now_ >= look_at
                    and not self._retire_when_drained
                    and not rq_compat.stop_requested(self)
                ):
                    more: list[tuple[Job, Queue]] = []
                    try:
                        more = self._claim_more(free)
                    except redis.RedisError as exc:  # an outage: the running jobs run on; claim again later
                        if not outage.is_outage(exc):
                            raise
                    for claimed_job, claimed_queue in more:
                        self._launch(claimed_job, claimed_queue)
                    if len(more) < free:
                        look_at = time.monotonic() + self.idle_look_gap
                    if not running:
                        break
                answer = self._wait_for_answer(look_at if len(running) < self.concurrency else None)
                if answer is CLAIMED_IN_WAIT:
                    look_at = 0.0  # a job came: there may be more
                elif answer is None:
                    self._horse_died_running()
                elif answer is not WAITING:
                    self._answered(answer)
                    # and those already in the pipe: one claim then fills all their slots
                    if self._answered_ready() is None:
                        self._horse_died_running()
                    look_at = 0.0  # a slot is free: fill it at once
                self._watch_running()
        finally:
            self._hard_killed = None

    def _answered_ready(self) -> Any:
        """Take in the answers the horse has already sent, without waiting (jobs whose ends were
        written together answer together): None if the horse turned out to be gone."""
        while self._horse is not None and self._running:
            answer = self._horse.wait(0)
            if answer is WAITING:
                break
            if answer is None:
                return None
            self._answered(answer)
        return WAITING

    def _wait_for_answer(self, look_at: float | None) -> Any:
        """The horse's next answer (WAITING: none until the next heartbeat, deadline or look for
        jobs; None: the horse is gone). With slots free (``look_at``: when to claim again), the
        wait is a BLMOVE on the first open queue instead, as an idle worker's (a job arriving starts
        at once, not at the next look): CLAIMED_IN_WAIT if it brought a job, now running. An answer that
        comes meanwhile waits in the pipe, which only delays refilling a slot no job waits for."""
        assert self._horse is not None
        if look_at is not None and not self._retire_when_drained and not rq_compat.stop_requested(self):
            answer = self._horse.wait(0)
            if answer is not WAITING:
                return answer
            timeout = max(0.0, self._wake_at(look_at) - time.monotonic())
            waited = self._wait_in_queue(timeout)
            if waited is CLAIMED_IN_WAIT:
                return CLAIMED_IN_WAIT
            return self._horse.wait(0 if waited is WAITING else timeout)
        return self._horse.wait(max(0.0, self._wake_at(look_at) - time.monotonic()))

    def _wait_in_queue(self, timeout: float) -> Any:
        """Wait up to ``timeout`` seconds in a BLMOVE on the first queue not paused (as
        ``_wait_and_claim`` does) and run the job it moves: CLAIMED_IN_WAIT if one now runs, WAITING if
        it waited for none, None if it did not wait (all paused, too short, or Redis away)."""
        if timeout < 0.01:  # (a BLMOVE's timeout of 0 would wait for ever)
            return None
        try:
            paused = pausing.paused_names(self.connection)
            open_ = [q for q in rq_compat.ordered_queues(self) if q.name not in paused]
            if not open_:
                return None
            claimed = self._claim(open_[0], wait=timeout)
        except StopRequested:  # asked while it claimed: the running jobs finish, nothing more is claimed
            return WAITING
        except redis.RedisError as exc:  # an outage: the running jobs run on
            if not outage.is_outage(exc):
                raise
            return None
        if claimed is None:
            return WAITING
        self._launch(*claimed)
        return CLAIMED_IN_WAIT

    def _wake_at(self, look_at: float | None) -> float:
        """When the watch must look again: the next heartbeat, a job's hard deadline, a stop sent,
        or the next look for jobs."""
        now_ = time.monotonic()
        wake = self._jobs_beaten_at + self.job_monitoring_interval
        for run in self._running.values():
            if run.hard_deadline is not None and not run.killed_for:
                wake = min(wake, run.hard_deadline)
            if run.stop_sent_at is not None or run.handed_back_at is not None:
                wake = min(wake, now_ + 0.25)
        if look_at is not None:
            wake = min(wake, look_at)
        return wake

    def _launch(self, job: Job, queue: Queue) -> None:
        """Start ``job`` (if the claim left it unstarted) and hand it to the horse beside the others.
        A horse found dead here (killed between answers) hands back what it ran, and a new one runs the job."""
        started = getattr(job, "started_execution", None)
        if started is None:
            started = job_steps.start(self, job, queue, heartbeat=False)
        message = {
            "job": job.id,
            "queue": queue.name,
            "execution": started.id,
            "started_at": (job.started_at or now()).timestamp(),
            "hash": getattr(job, "claimed_hash", None) or None,
        }
        if self._horse is None:
            self._horse = Horse(self._serve_as_horse)
        rq_compat.set_horse_pid(self, self._horse.pid)
        try:
            self._horse.send(message)
        except BrokenPipeError:
            self._horse_died_running()
            self._horse = Horse(self._serve_as_horse)
            rq_compat.set_horse_pid(self, self._horse.pid)
            self._horse.send(message)
        job.started_at = now()
        timeout = job.timeout or Queue.DEFAULT_TIMEOUT
        hard = time.monotonic() + timeout + HARD_KILL_GRACE if timeout > 0 else None
        self._running[job.id] = RunningJob(job, queue, started, hard)

    def _answered(self, answer: dict[str, Any]) -> None:
        """The horse says a job has ended (and is recorded)."""
        run = self._running.pop(answer.get("job") or "", None)
        if run is None:
            return
        self.executions.pop(run.execution.id, None)
        if answer["ok"] is None:  # the horse could not run it, and exits: the others go back
            self._fail_if_unrecorded(run.job, run.queue, run.execution, "the work horse failed to record the job's end")
        assert self._horse is not None
        if answer["ok"] is None or self._horse.worn_out(answer):
            self._retire_when_drained = True  # no new job for it; replaced once its jobs have ended
        if self._retire_when_drained and not self._running:
            self._retire_horse()
            rq_compat.set_horse_pid(self, 0)
            self._retire_when_drained = False

    def _watch_running(self) -> None:
        """Between answers: stop a run found superseded, kill the horse for a job that ignored its
        timeout or its stop, and heartbeat every running job when due."""
        now_ = time.monotonic()
        for run in list(self._running.values()):
            if run.handed_back_at is not None and now_ - run.handed_back_at >= 1.0 and run.stop_sent_at is None:
                self.log.warning(
                    "Worker %s: job %s was handed back to other workers meanwhile; stopping this run of it",
                    self.name,
                    run.job.id,
                )
                run.superseded = True
                self._send_stop(run)
            if any(other.killed_for for other in self._running.values()):
                continue  # the horse is being killed already
            if run.stop_sent_at is not None and now_ >= run.stop_sent_at + HARD_KILL_GRACE:
                run.killed_for = "superseded" if run.superseded else "stopped"
            elif run.hard_deadline is not None and now_ >= run.hard_deadline:
                run.killed_for = "timeout"
            if run.killed_for:
                self.log.warning(
                    "Worker %s: job %s ignored its %s; killing its work horse (its other jobs are handed back)",
                    self.name,
                    run.job.id,
                    "stop" if run.stop_sent_at is not None else "timeout",
                )
                self.kill_horse(signal.SIGKILL)
        if self._running and now_ - self._jobs_beaten_at >= self.job_monitoring_interval:
            self._jobs_beaten_at = now_
            try:
                self._heartbeat_running()
            except redis.RedisError as exc:  # the jobs run on; their ends are recorded once Redis takes them
                if not outage.is_outage(exc):
                    raise
                self.log.warning("Worker %s: could not heartbeat (%s); the jobs run on", self.name, exc)

    def _heartbeat_running(self) -> None:
        """:meth:`_maintain_heartbeats` for every running job, in one round trip; notes the runs
        found handed back (their execution gone from the started registry)."""
        runs = list(self._running.values())
        with self.connection.pipeline() as pipeline:
            registration = self.heartbeat(HEARTBEAT_TTL, pipeline=pipeline)
            holds, fresh = [], []
            for run in runs:
                job, execution = run.job, run.execution
                working = (now() - job.started_at).total_seconds() if job.started_at else 0.0
                ttl = int(self.get_heartbeat_ttl(job, working_time=working))
                execution.heartbeat(job.started_job_registry, ttl, pipeline=pipeline)
                limit_key = limits.job_key(job)
                if limit_key:
                    limits.queue_extend(pipeline, limit_key, job.id, execution.id, ttl)
                holds.append(len(pipeline))
                pipeline.zscore(job.started_job_registry.key, f"{job.id}:{execution.id}")
                fresh.append(len(pipeline))
                job.heartbeat(now(), ttl, pipeline=pipeline, xx=True)
            replies = pipeline.execute()
        for run, hold, new in zip(runs, holds, fresh, strict=True):
            if replies[new] == 1 and self.connection.hlen(run.job.key) == 1:  # deleted meanwhile (rq#1450)
                self.connection.delete(run.job.key)
            if replies[hold] is None and run.handed_back_at is None:
                run.handed_back_at = time.monotonic()
        self._learn_if_declared_dead(replies, registration)

    def _send_stop(self, run: RunningJob) -> None:
        """Ask the horse to stop this job alone (an exception raised in its thread)."""
        run.stop_sent_at = time.monotonic()
        try:
            if self._horse is not None:
                self._horse.send({"stop": run.job.id, "superseded": run.superseded})
        except BrokenPipeError:
            pass  # the horse is gone: its death is handled where its answers are read

    def _stop_running(self, job_id: str) -> bool:
        """A stop-job command for one of the jobs the horse runs beside others: stop it, not its
        neighbours. Whether this worker runs it."""
        run = self._running.get(job_id)
        if run is None:
            return False
        self.log.warning("Worker %s: stopping job %s (its neighbours run on)", self.name, job_id)
        self._send_stop(run)
        return True

    def _horse_died_running(self) -> None:
        """The horse running several jobs ended without answering for them. The job it was killed
        for (timeout, stop, superseded run), or the only one it ran, ends as :meth:`_horse_died`
        says; the others are handed back (``recovery.hand_back``): with no known culprit each uses
        an attempt (so a job that keeps crashing its horse runs out of retries), killed for a
        neighbour they do not."""
        horse, self._horse, self._retire_when_drained = self._horse, None, False
        assert horse is not None
        retpid, ret_val, rusage = horse.reap()
        rq_compat.set_horse_pid(self, 0)
        runs = list(self._running.values())
        self._running.clear()
        culprit = next((run for run in runs if run.killed_for), None)
        known = culprit is not None
        if culprit is None and len(runs) == 1:
            culprit = runs[0]
        how = (
            f"signal {os.WTERMSIG(ret_val)}"
            if os.WIFSIGNALED(ret_val)
            else f"exit status {os.waitstatus_to_exitcode(ret_val)}"
        )
        reason = f"its work horse died ({how}) while running {len(runs)} jobs at once"
        if culprit is not None and known:
            reason = f"its work horse was killed for job {culprit.job.id}, which ignored its {culprit.killed_for}"
        for run in runs:
            self.executions.pop(run.execution.id, None)
            try:
                if run is not culprit:
                    recovery.hand_back(
                        self.connection, run.job, reason, self.name, attempt=not known, execution_ids=[run.execution.id]
                    )
                    continue
                if run.killed_for == "superseded":
                    self._superseded_run = run.execution.id
                elif run.killed_for == "stopped":
                    rq_compat.set_stopped_job(self, run.job.id)
                elif run.killed_for == "timeout":
                    timeout = run.job.timeout or Queue.DEFAULT_TIMEOUT
                    self._hard_killed = (
                        f"JobTimeoutException: job exceeded its {timeout} s timeout and ignored the alarm; killed"
                    )
                self._horse_ended(run.job, run.queue, run.execution, retpid, ret_val, rusage)
            except redis.RedisError as exc:
                if not outage.is_outage(exc):
                    raise
                self.log.warning(
                    "Worker %s: %s; job %s stays started until the sweep hands it back",
                    self.name,
                    outage.describe(exc),
                    run.job.id,
                )
            finally:
                self._hard_killed = None
