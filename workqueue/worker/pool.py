"""The consumer's pool of worker processes: RQ's WorkerPool, with names people can read.

Each worker runs in its own process group, so a Ctrl-C typed at the terminal reaches the pool
alone and the pool decides: the first signal asks every worker to finish its job and exit, the
second stops them at once. A worker also stops if the pool process dies. No stop is lost to a
worker that is starting, however early it comes (``worker.process``).

The pool rides out every Redis error as an outage (its status line says which); anything else it
cannot survive stops its workers, reaps them, and ends the consumer with exit code 1, never leaving
workers without their pool.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing.util
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.sentinel
from rq.worker import Worker
from rq.worker_pool import ForkProcess, WorkerData, WorkerPool, run_worker

from workqueue import jobstats, outage, pausing, priorities, recovery, rq_compat
from workqueue.connection import without_retries, worker_client
from workqueue.errors import PoolFailed, RedisLostData
from workqueue.jobs import SERIALIZER, CatalogueJob
from workqueue.settings import ABANDON_GRACE, QUICK_TIMEOUT, SWEEP_INTERVAL
from workqueue.worker import autoscale
from workqueue.worker.autoscale import Autoscaler, Scaling
from workqueue.worker.catalogue_worker import WORKER_CLASSES, use_concurrency
from workqueue.worker.process import (
    STOPPED_ON_PURPOSE,
    die_with_parent,
    hold_stops_while_starting,
    serve_pool,
    stopped_on_purpose,
    stops_held,
)

log = logging.getLogger(__name__)


def _run_worker_detached(*args: Any, concurrency: int = 1, **kwargs: Any) -> None:
    """Worker process body: a stop that comes while it starts kept for it (``process``), its own
    process group, SIGTERM if the pool dies, then RQ's worker, whose horse runs up to ``concurrency``
    jobs at once.

    Exits with STOPPED_ON_PURPOSE when a kill script stopped it, so the pool does not replace it.
    """
    hold_stops_while_starting()  # not the pool's handlers: a stop is noted until RQ's are in place
    use_concurrency(concurrency)
    os.setpgrp()
    die_with_parent(signal.SIGTERM)
    serve_pool(os.getppid())
    try:
        run_worker(*args, **kwargs)
    finally:
        if stopped_on_purpose():
            sys.exit(STOPPED_ON_PURPOSE)


@dataclass
class WorkerView:
    name: str
    state: str
    finished: int
    failed: int
    #: A worker running several jobs at once (``--concurrency``): "used/N" as its last heartbeat wrote it.
    slots: str = ""


@dataclass
class PoolStatus:
    """One look at the pool: its live workers and what they and their queues hold."""

    workers: list[WorkerView] = field(default_factory=list)
    finished: int = 0
    failed: int = 0
    queued: int = 0
    stopping: bool = False
    #: Workers stopped on purpose by a kill script (not replaced).
    stopped: list[str] = field(default_factory=list)
    #: Seconds Redis has not been answering (or refusing writes), if it is.
    redis_down_for: float | None = None
    #: What the outage is, in one line (``outage.describe``).
    outage: str = ""
    #: When (``time.time()``) the pool saw Redis come back without its data, if it did.
    lost_data_at: float | None = None
    #: The pool's queues that are paused (``workqueue.pausing``).
    paused: list[str] = field(default_factory=list)
    #: Jobs waiting on the queues not paused: the backlog autoscaling grows for.
    runnable: int = 0
    #: ``--workers MIN-MAX``: the bounds ("2-10"), and the pool's last scaling and why.
    bounds: str = ""
    scaled: str = ""

    @property
    def busy(self) -> int:
        return sum(1 for w in self.workers if w.state == "busy")

    @property
    def idle(self) -> int:
        return len(self.workers) - self.busy

    @property
    def slots(self) -> tuple[int, int] | None:
        """Jobs running and the most that may (``--concurrency``), over the workers that say; None if none does."""
        pairs = [tuple(int(n) for n in w.slots.split("/")) for w in self.workers if w.slots.count("/") == 1]
        if not pairs:
            return None
        return sum(pair[0] for pair in pairs), sum(pair[1] for pair in pairs)


class ConsumerPool(WorkerPool):
    """RQ's WorkerPool of catalogue workers (``worker.WORKER_CLASSES[order]``) named ``<host>.<pid>.w<n>``."""

    def __init__(
        self,
        queues: Iterable[str],
        connection: redis.Redis,
        num_workers: int,
        on_tick: Callable[[PoolStatus], None] | None = None,
        order: str = "priority",
        scaling: Scaling | None = None,
        concurrency: int = 1,
    ) -> None:
        super().__init__(
            list(queues),
            connection=connection,
            num_workers=num_workers,
            worker_class=WORKER_CLASSES[order],
            serializer=SERIALIZER,
            job_class=CatalogueJob,
        )
        self.name = f"{socket.gethostname()}.{os.getpid()}"
        self._numbers = itertools.count(1)
        self._on_tick = on_tick
        self._signals = 0
        # What wakes the loop at once (a stop, a worker's exit): a byte on a pipe, written by the
        # signal handlers. Not a threading.Event: its set() takes a lock, which a handler run while
        # the loop's own wait holds it waits for forever (the consumer then never exits).
        self._wake_r: int | None = None
        self._wake_w: int | None = None
        # Counts of workers that have exited, so the totals survive them.
        self._seen: dict[str, tuple[int, int]] = {}
        self.stopped: list[str] = []
        self._next_sweep = 0.0
        # The workers' connection rides out outages; the pool's own looks must not hang on one.
        self._quick = without_retries(connection, socket_timeout=QUICK_TIMEOUT)
        self.redis_down_since: float | None = None
        self._outage = ""
        self._mark = outage.DataMark(self._quick)
        # Autoscaling (``--workers MIN-MAX``): the decisions, the workers being stopped for it, and
        # the last scaling said.
        self._scaler = Autoscaler(scaling) if scaling is not None and not scaling.fixed else None
        self._retiring: set[str] = set()
        self.scaled = ""
        self._start_options: dict[str, Any] = {}
        self.concurrency = concurrency  # jobs each worker's horse runs at once (--concurrency)
        self._last_status: PoolStatus | None = None

    def get_worker_process(self, name: str, burst: bool, _sleep: float = 0, logging_level: str = "INFO"):
        process = super().get_worker_process(name, burst, _sleep, logging_level)
        args, kwargs = rq_compat.process_arguments(process)
        if isinstance(self.connection.connection_pool, redis.sentinel.SentinelConnectionPool):
            # RQ rebuilds the client in the worker from a plain pool, which would keep the master
            # found first: give it a Sentinel pool of its own, which follows a failover.
            args = (*args[:2], worker_client(args[3], args[4]), *args[3:])
        kwargs = {**kwargs, "concurrency": self.concurrency}
        return ForkProcess(target=_run_worker_detached, args=args, kwargs=kwargs, name=process.name)

    def start_worker(
        self, count: int | None = None, burst: bool = True, _sleep: float = 0, logging_level: str = "INFO"
    ):
        if self.status == self.Status.STOPPED:  # a signal arrived while the pool was starting
            return
        name = f"{self.name}.w{next(self._numbers)}"
        process = self.get_worker_process(name, burst=burst, _sleep=_sleep, logging_level=logging_level)
        # Stops held meanwhile: the worker starts with them blocked (a stop sent to it waits for its
        # handlers), and one sent to the pool is handled once the worker is known, so it is forwarded.
        with stops_held():
            process.start()
            self.worker_dict[name] = WorkerData(name=name, pid=process.pid, process=process)
        self._seen[name] = (0, 0)
        log.debug("started worker %s (pid %d)", name, process.pid)

    def handle_dead_worker(self, worker_data: WorkerData) -> None:
        """A worker stopped by a kill script shrinks the pool; one that crashed is replaced."""
        super().handle_dead_worker(worker_data)
        code = worker_data.process.exitcode
        if worker_data.name in self._retiring:  # scaled in: already taken off num_workers
            self._retiring.discard(worker_data.name)
            log.info("worker %s stopped (scaled in)", worker_data.name)
        elif code == STOPPED_ON_PURPOSE:
            self.stopped.append(worker_data.name)
            self.num_workers -= 1
            log.warning("worker %s was stopped on purpose; %d left", worker_data.name, self.num_workers)
            if self.num_workers <= 0:
                self.status = self.Status.STOPPED
        elif self.status != self.Status.STOPPED and not rq_compat.pool_burst(self):
            log.warning("worker %s died (exit code %s); starting a replacement", worker_data.name, code)

    @property
    def signalled(self) -> bool:
        """Whether a stop signal (Ctrl-C, SIGTERM) ended the pool, rather than empty queues or kill scripts."""
        return self._signals > 0

    def request_stop(self, signum: int | None = None, frame: Any = None) -> None:
        """First signal: warm shutdown of every worker. Second: cold shutdown, at once."""
        self._signals += 1
        self.status = self.Status.STOPPED
        if self._signals == 1:
            log.info("stopping: each worker finishes its current job, then exits")
            for data in list(self.worker_dict.values()):
                if data.name not in self._retiring:  # already stopping: a second signal would be a cold stop
                    self.stop_worker(data)
        else:
            log.warning("stopping at once")
            for data in list(self.worker_dict.values()):
                self.stop_worker(data, sig=signal.SIGTERM)
        self._poke()

    def _poke(self) -> None:
        """Wake the loop (from a signal handler: one write to a pipe, no lock taken)."""
        fd = self._wake_w
        if fd is not None:
            with contextlib.suppress(OSError):  # full: a wake is already waiting
                os.write(fd, b"!")

    def _doze(self, seconds: float) -> None:
        """Wait up to ``seconds``, less if woken (:meth:`_poke`)."""
        fd = self._wake_r
        if fd is not None and select.select([fd], [], [], seconds)[0]:
            with contextlib.suppress(BlockingIOError):
                os.read(fd, 4096)

    def _close_wake(self) -> None:
        """Close the wake pipe (at the end of :meth:`start`, and in each worker, which inherits it)."""
        fds, self._wake_r, self._wake_w = (self._wake_r, self._wake_w), None, None
        for fd in fds:
            if fd is not None:
                os.close(fd)

    def start(self, burst: bool = False, logging_level: str = "WARNING") -> None:
        """Run the pool until it is stopped (or, with ``burst``, until the queues are empty)."""
        rq_compat.set_pool_burst(self, burst)
        self._start_options = {"burst": burst, "logging_level": logging_level}
        self.status = self.Status.STARTED
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        multiprocessing.util.register_after_fork(self, ConsumerPool._close_wake)
        rq_compat.install_pool_signal_handlers(self)
        # A worker's exit wakes the loop at once (RQ's looks every half second), so a crashed worker
        # is replaced, and a burst pool ends, as soon as it happens.
        on_child = signal.signal(signal.SIGCHLD, lambda signum, frame: self._poke())
        try:
            self.start_workers(burst=burst, logging_level=logging_level)
            while True:
                if self.status == self.Status.STOPPED:
                    if self.all_workers_have_stopped():
                        break
                else:
                    self.check_workers(respawn=not burst)
                    if burst and self.number_of_active_workers == 0:
                        break
                self._maintain()
                self._doze(0.5)
            self._tick()
            if self._scaler is not None:
                with contextlib.suppress(redis.RedisError):  # else its entry lapses on its own
                    autoscale.withdraw(self._quick, self.name)
        except BaseException as exc:
            self._abandon_workers()
            if isinstance(exc, (SystemExit, KeyboardInterrupt)):
                raise
            log.critical("the pool failed; its workers were stopped", exc_info=True)
            raise PoolFailed(
                f"the consumer's pool failed ({type(exc).__name__}: {exc}); its workers were stopped, "
                "their jobs go back to their queues"
            ) from None
        finally:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL if on_child is None else on_child)  # None: set from C
            self._close_wake()

    def _abandon_workers(self) -> None:
        """Stop every worker at once (each hands its job back), wait ABANDON_GRACE seconds for them,
        then kill what is left: a pool that ends never leaves its workers running, nor hangs in
        multiprocessing's join at exit."""
        self.status = self.Status.STOPPED
        workers = list(self.worker_dict.values())
        for data in workers:
            for sig in (signal.SIGINT, signal.SIGTERM):  # the second is a stop at once
                self.stop_worker(data, sig=sig)
        deadline = time.monotonic() + ABANDON_GRACE
        for data in workers:
            data.process.join(max(0.0, deadline - time.monotonic()))
            if data.process.is_alive():
                log.warning("worker %s did not stop; killing it", data.name)
                data.process.kill()
                data.process.join(5)

    def _maintain(self) -> None:
        """Every SWEEP_INTERVAL, hand back the jobs of dead workers anywhere and sample the queues'
        backlog; then the status line. Every Redis error is an outage here: the pool carries on
        (and keeps its workers' number) until Redis answers again."""
        if time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + SWEEP_INTERVAL
            try:
                recovery.sweep(self._quick)
                jobstats.sample_backlog(self._quick)
                self._publish_scaling()
            except redis.RedisError as exc:
                self._note_outage(exc)
        self._tick()

    def _note_outage(self, exc: redis.RedisError) -> None:
        if not outage.is_outage(exc):
            log.warning("Redis error in the pool's sweep or status: %s", exc)
        self._outage = outage.describe(exc)
        self.redis_down_since = self.redis_down_since or time.monotonic()

    def _tick(self) -> None:
        """Look at Redis (the data mark, which also tells whether it takes writes, then the pool's
        snapshot) and show the result through ``on_tick``."""
        try:
            try:
                self._mark.check(self._quick)
            except RedisLostData as exc:
                log.error("%s; the consumer carries on with what Redis holds now", exc)
            status = self.snapshot()
            self.redis_down_since, self._outage = None, ""
            self._autoscale(status)
        except redis.RedisError as exc:
            self._note_outage(exc)
            status = PoolStatus(
                workers=[WorkerView(n, "?", *self._seen.get(n, (0, 0))) for n in self.worker_dict],
                stopping=self.status == self.Status.STOPPED,
                stopped=list(self.stopped),
            )
            status.redis_down_for = time.monotonic() - (self.redis_down_since or time.monotonic())
            status.outage = self._outage
        status.lost_data_at = self._mark.lost_at
        if self._scaler is not None:
            status.bounds, status.scaled = self._scaler.scaling.describe(), self.scaled
        if self._on_tick is not None:
            self._on_tick(status)

    def _publish_scaling(self) -> None:
        """A scaling pool's bounds, size and last scaling, for the dashboard (``autoscale.publish``)."""
        if self._scaler is None:
            return
        status = self._last_status
        if status is not None and self.status != self.Status.STOPPED:
            bounds = self._scaler.scaling.describe()
            autoscale.publish(
                self._quick, self.name, bounds, len(status.workers), status.busy, status.queued, self.scaled
            )

    def _autoscale(self, status: PoolStatus) -> None:
        """Grow or shrink the pool as ``worker.autoscale`` decides from this look at it. Growing
        starts workers at once; shrinking stops one idle worker gracefully (a warm stop, as Ctrl-C's
        first: a job it claims meanwhile it finishes, then exits) and it is not replaced."""
        self._last_status = status
        if self._scaler is None or self.status == self.Status.STOPPED:
            return
        workers = [w for w in status.workers if w.name not in self._retiring]
        decision = self._scaler.decide(workers, self.num_workers, status.runnable, self._retiring, time.monotonic())
        if decision is None:
            return
        if decision.retire is not None:
            data = self.worker_dict.get(decision.retire)
            if data is None:
                return
            self._retiring.add(decision.retire)
            self.num_workers = decision.target
            self.stop_worker(data, sig=signal.SIGINT)
        else:
            added, self.num_workers = decision.target - self.num_workers, decision.target
            for _ in range(added):
                self.start_worker(**self._start_options)
        self.scaled = decision.reason
        log.info("%s", decision.reason)

    def snapshot(self) -> PoolStatus:
        """The pool's workers and queues as Redis sees them, in one round trip."""
        names = list(self._seen)
        with self._quick.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hmget(
                    Worker.redis_worker_namespace_prefix + name,
                    "state",
                    "successful_job_count",
                    "failed_job_count",
                    "slots",
                )
            queues = rq_compat.pool_queue_names(self)
            for queue in queues:  # every priority level's list (RQ's own holds the normal one)
                for level in priorities.levels():
                    pipe.llen(priorities.key(queue, level))
            pipe.smembers(pausing.PAUSED_KEY)
            replies = pipe.execute()
        paused = {p.decode(errors="replace") for p in replies.pop()}
        status = PoolStatus(stopping=self.status == self.Status.STOPPED, stopped=list(self.stopped))
        for name, (state, done, failed, slots) in zip(names, replies, strict=False):  # the queues' lengths follow
            if state is not None:  # a dead worker's hash expires a minute after it exits
                self._seen[name] = (int(done or 0), int(failed or 0))
            if name in self.worker_dict:
                counts = self._seen.get(name, (0, 0))
                view = WorkerView(name, (state or b"starting").decode(), *counts, slots=(slots or b"").decode())
                status.workers.append(view)
        status.finished = sum(done for done, _ in self._seen.values())
        status.failed = sum(failed for _, failed in self._seen.values())
        lengths, levels = replies[len(names) :], len(priorities.levels())
        per_queue = {queue: sum(lengths[i * levels : (i + 1) * levels]) for i, queue in enumerate(queues)}
        status.queued = sum(per_queue.values())
        status.paused = [queue for queue in queues if queue in paused]
        status.runnable = sum(count for queue, count in per_queue.items() if queue not in paused)
        return status
