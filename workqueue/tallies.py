"""A process's tallies of job ends: the statistics of ``jobstats.record_end`` and a worker's RQ
counters, counted in memory and written about once a second in one pipeline (:class:`Tally`), not
in each job's end. A worker's horse keeps one per connection (:func:`tally`), written by a thread of
its own or, one job at a time, from the horse's loop between jobs (:func:`flush_from_loop`, :func:`tick`).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import deque

import redis

from workqueue import lua
from workqueue.jobstats import BUCKETS, bucket_key, histogram_key, minute, samples_key, totals_key
from workqueue.settings import STATS_RETENTION, STATS_SAMPLES

log = logging.getLogger(__name__)

#: Seconds between two writes of what a process has tallied (:class:`Tally`).
FLUSH_INTERVAL = 1.0

# A worker's RQ counters, added only while its hash lives (a horse flushing after its worker
# unregistered must not make a hash without a TTL). KEYS: the worker's hash. ARGV: jobs, seconds.
_WORKER_COUNTS = lua.script("stats_worker_counts")


class _Pending:
    """What a :class:`Tally` has counted and not written yet."""

    __slots__ = ("expiring", "floats", "ints", "samples", "workers")

    def __init__(self) -> None:
        self.ints: dict[tuple[str, str], int] = {}
        self.floats: dict[tuple[str, str], float] = {}
        self.expiring: set[str] = set()
        self.samples: dict[str, deque[str]] = {}
        self.workers: dict[str, list[float]] = {}

    def __bool__(self) -> bool:
        return bool(self.ints or self.floats or self.samples or self.workers)

    def merge(self, later: _Pending) -> None:
        """Add ``later``'s counts to these (a flush that failed, put back before what came since)."""
        for (key, name), n in later.ints.items():
            self.ints[(key, name)] = self.ints.get((key, name), 0) + n
        for (key, name), x in later.floats.items():
            self.floats[(key, name)] = self.floats.get((key, name), 0.0) + x
        self.expiring |= later.expiring
        for key, values in later.samples.items():
            self.samples.setdefault(key, deque(maxlen=STATS_SAMPLES)).extend(values)
        for key, (jobs, seconds) in later.workers.items():
            counts = self.workers.setdefault(key, [0, 0.0])
            counts[0] += jobs
            counts[1] += seconds

    def queue_on(self, pipe: redis.client.Pipeline) -> None:
        """The writes that add these counts, as :func:`record_end` would have made them one by one."""
        for (key, name), n in self.ints.items():
            pipe.hincrby(key, name, n)
        for (key, name), x in self.floats.items():
            pipe.hincrbyfloat(key, name, round(x, 6))
        for key, values in self.samples.items():
            pipe.lpush(key, *values)  # the newest ends first, as one LPUSH each would leave them
            pipe.ltrim(key, 0, STATS_SAMPLES - 1)
        for key in self.expiring:
            pipe.expire(key, STATS_RETENTION)
        for key, (jobs, seconds) in self.workers.items():
            pipe.eval(_WORKER_COUNTS, 1, key, int(jobs), repr(seconds))


class Tally:
    """A process's job ends, counted in memory and written about once a second (FLUSH_INTERVAL)
    in one pipeline, not in each job's end: the statistics of :func:`record_end` and a worker's
    RQ counters (``successful_job_count``, ``total_working_time``). A worker's horse keeps one
    (:func:`tally`); its thread writes while there is something to write, and the horse writes
    the rest as it exits. Readers see the figures at most about a second late; a horse that is
    killed loses the counts of its last second (the jobs' own records are written with each job)."""

    def __init__(self, connection: redis.Redis) -> None:
        self.connection = connection
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._pending = _Pending()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        #: When the oldest count not written yet was made (monotonic), for a loop that flushes (:func:`tick`).
        self._since: float | None = None
        self._failing = False

    def add_end(
        self, queue: str, task: str, outcome: str, run: float | None, wait: float | None, now: float | None = None
    ) -> None:
        """Count a job's end as :func:`record_end` does (written by the next flush)."""
        bucket, field_name = bucket_key(queue, minute(now)), f"{task}:{outcome}"
        with self._lock:
            pending = self._pending
            pending.ints[(bucket, field_name)] = pending.ints.get((bucket, field_name), 0) + 1
            pending.expiring.add(bucket)
            totals = (totals_key(queue), field_name)
            pending.ints[totals] = pending.ints.get(totals, 0) + 1
            if run is not None:
                histogram = histogram_key(queue, task)
                bound = next((str(b) for b in BUCKETS if run <= b), "+Inf")
                for name in (f"le:{bound}", "count"):
                    pending.ints[(histogram, name)] = pending.ints.get((histogram, name), 0) + 1
                pending.floats[(histogram, "sum")] = pending.floats.get((histogram, "sum"), 0.0) + round(run, 6)
            for kind, seconds, digits in (("run", run, 6), ("wait", wait, 4)):
                if seconds is not None:
                    key = samples_key(queue, task, kind)
                    pending.samples.setdefault(key, deque(maxlen=STATS_SAMPLES)).append(repr(round(seconds, digits)))
                    pending.expiring.add(key)
        self._start()

    def add_worker(self, worker_key: str, jobs: int, seconds: float) -> None:
        """Add to a worker's RQ counters: ``jobs`` more succeeded, ``seconds`` more working."""
        with self._lock:
            counts = self._pending.workers.setdefault(worker_key, [0, 0.0])
            counts[0] += jobs
            counts[1] += seconds
        self._start()

    def flush(self) -> None:
        """Write what is counted, now, in one round trip. On a Redis error the counts are kept for
        the next flush, and the error raised."""
        with self._flushing:  # one at a time: a horse's last flush waits for its thread's, not cut short by the exit
            with self._lock:
                pending, self._pending, self._since = self._pending, _Pending(), None
            if not pending:
                return
            try:
                with self.connection.pipeline(transaction=False) as pipe:
                    pending.queue_on(pipe)
                    pipe.execute()
            except BaseException:
                with self._lock:
                    pending.merge(self._pending)
                    self._pending, self._since = pending, time.monotonic()  # the next try in a second
                raise

    def flush_quietly(self) -> None:
        """:meth:`flush`, logging instead of raising (a horse on its way out, the flushing thread):
        once when writing starts to fail (Redis away, say), not at every try, and once it works again."""
        try:
            self.flush()
        except Exception as exc:
            if not self._failing:
                log.warning("could not write the statistics of the last jobs (%s); kept for the next try", exc)
            self._failing = True
        else:
            if self._failing:
                log.warning("the statistics of the last jobs are written again")
            self._failing = False

    def due_in(self) -> float | None:
        """Seconds until what is counted should be written (0: now), None if nothing waits."""
        since = self._since
        return None if since is None else max(0.0, since + FLUSH_INTERVAL - time.monotonic())

    def _start(self) -> None:
        if self._since is None:
            self._since = time.monotonic()
        if self._thread is not None or not _threaded:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="workqueue-stats", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        # Stop signals are for the main thread: one delivered here would reach it late (in a
        # worker, after the fork its blocking of them is meant to guard: see worker.horse).
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        while not self._wake.wait(FLUSH_INTERVAL):
            self.flush_quietly()


_tallies: dict[tuple[int, int], Tally] = {}

#: Whether a tally writes from a thread of its own; a process whose loop calls :func:`tick` needs none.
_threaded = True


def flush_from_loop() -> None:
    """This process writes its tallies from its own loop, calling :func:`tick` (a worker's horse
    between jobs): no thread. A horse with a thread is not killed whole at once: until its last
    thread has gone, the worker could still hand it a job, lost with it."""
    global _threaded
    _threaded = False


def tick() -> float | None:
    """Write this process's tallies that are due; the seconds until the next is (None: none waits)."""
    waits = []
    for key, found in list(_tallies.items()):
        if key[0] != os.getpid():
            continue
        due = found.due_in()
        if due == 0:
            found.flush_quietly()
            due = found.due_in()  # None, or a second from now if the flush failed
        if due is not None:
            waits.append(due)
    return min(waits, default=None)


def tally(connection: redis.Redis) -> Tally:
    """This process's tally for ``connection``'s Redis (one per process and connection pool: a
    forked horse gets its own, and its own thread)."""
    key = (os.getpid(), id(connection.connection_pool))
    found = _tallies.get(key)
    if found is None:
        found = _tallies[key] = Tally(connection)
    return found


def flush_all() -> None:
    """Write every tally of this process now (a horse about to exit); never raises."""
    for key, found in list(_tallies.items()):
        if key[0] == os.getpid():
            found.flush_quietly()
