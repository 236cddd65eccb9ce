"""How a worker stops: RQ's warm stop (Ctrl-C, SIGTERM), honoured during a Redis outage too; a stop
at once (a second signal, ``kill_workers --now``), which hands back the jobs it claimed instead of
leaving them "started"; the shutdown commands sent through Redis, which mark it stopped on purpose;
and a stop-job command for one job, not its neighbours (several at once) nor the running one (a job
claimed ahead)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import redis
from rq.command import parse_payload
from rq.job import Job

from workqueue import bells, outage, recovery, rq_compat
from workqueue.connection import without_retries
from workqueue.control import SHUTDOWN_NOW
from workqueue.worker.process import mark_stopped_on_purpose, pool_gone, stop_noted
from workqueue.worker.slots import SlotsWorker

#: Seconds after a first SIGTERM in which another is the same stop (``StoppingWorker._same_term_again``,
#: as RQ's one second); the kernel's repeats of a pool's death come within milliseconds.
TERM_REPEAT = 1.0
#: Why a worker with neither its pool nor Redis stops at once (said with its jobs' hand-back).
ORPHANED_IN_OUTAGE = "its consumer's pool died while Redis was not answering"


class StoppingWorker(SlotsWorker):
    """The worker's stops (see the module); ``CatalogueWorker`` sets the state below."""

    #: Stopping at once, and why (said in the hand-back of each job it claimed).
    _cold: bool
    _stop_reason: str
    #: A cold stop is under way: a signal arriving during it is ignored.
    _forcing_stop: bool
    #: When the first stop came as a SIGTERM, if it did (the pool's own stops begin with a SIGINT).
    _first_term_at: float | None

    def handle_payload(self, message: dict) -> None:
        """RQ's pub/sub commands, plus ours; a shutdown marks the worker as stopped on purpose."""
        payload = parse_payload(message)
        command = payload.get("command")
        if command == bells.WAKE_COMMAND:  # an idle bell (``workqueue.bells``)
            return self.idle_bell.rung()
        if command == "stop-job" and self.concurrency == 1 and self._stop_if_ahead(payload.get("job_id") or ""):
            return None  # claimed ahead: stopped before it runs, the running job runs on
        if command == "stop-job" and self.concurrency > 1:  # only that job, not its neighbours
            if not self._stop_running(payload.get("job_id") or ""):
                self.log.warning("Not working on job %s, command ignored.", payload.get("job_id"))
            return None
        if command not in ("shutdown", SHUTDOWN_NOW):
            return super().handle_payload(message)
        mark_stopped_on_purpose()
        by = payload.get("by") or "a shutdown command"
        self._stop_reason = f"stopped by {by}"
        self._cold = command == SHUTDOWN_NOW
        self.log.warning("Worker %s: %s (%s)", self.name, self._stop_reason, "at once" if self._cold else "gracefully")
        os.kill(os.getpid(), signal.SIGTERM if self._cold else signal.SIGINT)

    def _install_signal_handlers(self) -> None:
        """RQ's, installed just before its loop. A Ctrl-C that came while the worker started
        (``process.stop_noted``) is acted on now, as RQ's warm stop of an idle worker, without
        raising outside the loop: it stops before its first job, and a second signal is a cold stop."""
        rq_compat.worker_signal_handlers(self)
        if stop_noted():
            self.log.info("Worker %s: stopping before its first job (asked while it started)", self.name)
            rq_compat.set_stop_requested(self)
            signal.signal(signal.SIGINT, self.request_force_stop)
            signal.signal(signal.SIGTERM, self.request_force_stop)

    def request_stop(self, signum: int, frame: Any) -> None:
        """RQ's warm stop, honoured during a Redis outage too: from ``settings.OUTAGE_STOP_GRACE`` seconds
        on, Redis commands fail instead of being retried for minutes. A worker whose pool died while
        Redis is not answering stops at once (its horse killed, its job handed back if Redis takes
        it, else by the sweep once Redis is back): nobody is left to wait for."""
        outage.request_stop()
        if signum == signal.SIGTERM:
            self._first_term_at = time.monotonic()
        if not self._cold and pool_gone() and not self._redis_answers():
            self._cold = True
            self._stop_reason = ORPHANED_IN_OUTAGE
        if self._cold:
            return self.request_force_stop(signum, frame)
        try:
            return super().request_stop(signum, frame)
        except redis.RedisError as exc:  # a busy worker's note of the stop: it still stops after its job
            if not outage.is_outage(exc):
                raise
            self.log.warning("Worker %s: %s; stopping after the current job", self.name, outage.describe(exc))

    def stop_at_once_if_orphaned(self) -> None:
        """Redis did not answer this worker: if its pool has died too, it stops at once, as when
        both were gone at its stop signal (:meth:`request_stop`); Redis may go only after that
        signal, while the worker would otherwise wait for its job to end with nobody to tell."""
        if pool_gone() and not self._cold:
            self._cold = True
            self._stop_reason = ORPHANED_IN_OUTAGE
            self.request_force_stop(signal.SIGTERM, None)

    def _heartbeat_running(self) -> None:
        """The slots' heartbeat (``SlotsWorker``); Redis not answering it may stop an orphaned worker."""
        try:
            super()._heartbeat_running()
        except redis.RedisError as exc:
            if outage.is_outage(exc):
                self.stop_at_once_if_orphaned()
            raise

    def _redis_answers(self) -> bool:
        """A quick look (a second at most, no retries): does Redis answer now?"""
        try:
            return bool(without_retries(self.connection, socket_timeout=1.0).ping())
        except redis.RedisError:
            return False

    def request_stop_execution(self, execution_id: str) -> None:
        """RQ's stop of one execution; with several jobs at once, that job alone (:meth:`_stop_running`)."""
        if self.concurrency > 1:
            execution = self.executions.get(execution_id)
            if execution is None or not self._stop_running(execution.job_id):
                self.log.warning("Not running execution %s, command ignored.", execution_id)
            return
        execution = self.executions.get(execution_id)
        if execution is not None and self._stop_if_ahead(execution.job_id):
            return  # claimed ahead: stopped before it runs, the running job runs on
        super().request_stop_execution(execution_id)

    def _write_ends_before_stopping(self, in_handler: bool = False) -> None:
        """The ends its horse handed over are of jobs that have finished: written, if Redis takes
        them; if not, those jobs stay started, and the sweep hands them back once the worker is gone.
        ``in_handler``: from the stop's signal handler (see ``HeldEnds.write``)."""
        try:
            if self.held_ends.write(self.connection, self.name, in_handler=in_handler):
                return
        except redis.RedisError as exc:
            if not outage.is_outage(exc):
                raise
        self.log.warning(
            "Worker %s: the ends of %d finished job(s) were not written; the sweep hands those jobs back",
            self.name,
            len(self.held_ends),
        )

    def request_force_stop(self, signum: int, frame: Any) -> None:
        """Cold shutdown, however soon after the first signal; the running job is handed back.

        RQ ignores a second signal within a second of the first, because under a terminal the
        pool and the worker both receive each Ctrl-C. Our pool runs each worker in its own process
        group and forwards each signal once, so a quick second Ctrl-C is meant.
        """
        if self._forcing_stop:  # a signal during the cold stop itself (the pool forwards each it gets)
            return
        if self._same_term_again(signum):
            self.log.debug("Worker %s: SIGTERM again within %.0f s: the same stop", self.name, TERM_REPEAT)
            return
        self._forcing_stop = True
        self.log.warning("Worker %s: cold shut down", self.name)
        # The job it claimed, whether or not its horse has it yet: the claim marks it started first.
        outage.request_stop()
        jobs: list[Job | str]
        if self.concurrency > 1:  # every job it claimed, whether or not the horse has it yet
            jobs = [execution.job_id for execution in list(self.executions.values())]
            self._running.clear()
        else:
            try:
                job = self.get_current_job() if self.executions else None
            except redis.RedisError as exc:
                if not outage.is_outage(exc):
                    raise
                job = None  # left started: the sweep hands it back once Redis answers
            # Between two jobs, the first "current" one is claimed ahead: given back as it was, by teardown.
            jobs = [job] if job is not None and not self._holds_ahead(job.id) else []
        if self.horse_pid:
            self.kill_horse(signal.SIGKILL)
            self.wait_for_horse()
            rq_compat.set_horse_pid(self, 0)
        reason = self._stop_reason if self._cold else "the consumer was stopped at once"
        if self.concurrency == 1:  # those held ahead first: the running job goes back in front of them
            self._write_ends_before_stopping(in_handler=True)
            self.settle_ahead(give_back=True, why="the worker stops at once")
        for one in jobs:
            try:
                recovery.hand_back(self.connection, one, reason, self.name)
            except redis.RedisError as exc:
                if not outage.is_outage(exc):
                    raise
                self.log.warning(
                    "Worker %s: %s, so job %s stays started; the sweep hands it back once Redis answers",
                    self.name,
                    outage.describe(exc),
                    one if isinstance(one, str) else one.id,
                )
        self.stop_scheduler_left()
        raise SystemExit()

    def _same_term_again(self, signum: int) -> bool:
        """Whether this SIGTERM repeats the first stop, a SIGTERM too, within TERM_REPEAT seconds. A
        pool killed with several threads sends the worker its death signal (PDEATHSIG) once per
        thread, as each adopts the worker in turn before dying: that is one stop (a warm one, the
        running job finishes), not a second that stops it at once. The pool's double Ctrl-C (a SIGINT
        then a SIGTERM) and ``kill_workers --now`` still stop it at once."""
        first = self._first_term_at
        if signum != signal.SIGTERM or self._cold or first is None:
            return False
        return time.monotonic() - first < TERM_REPEAT

    def stop_scheduler_left(self) -> None:
        """Stop RQ's scheduler process if it still runs. RQ stops it in its teardown, which a stop
        at once (raised from a signal handler) or Redis going away can cut short; the worker's exit
        would then wait for it forever (multiprocessing joins its children)."""
        if rq_compat.scheduler_running(self):
            self.stop_scheduler()
