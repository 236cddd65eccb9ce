"""The stage a demo scenario (``workqueue.demos``) plays on: real ``consumer_main.py`` processes
started and stopped, producer threads enqueueing through the producer's API, every batch followed to
say which worker ran which job from which queue, and whatever did not go as promised collected.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import redis
from rq import Queue
from rq.job import Job
from rq.worker_registration import get_keys

from workqueue import batches, producer
from workqueue.connection import connect
from workqueue.errors import WorkqueueError
from workqueue.replies import decoded

#: Where ``consumer_main.py`` lives: the repository's root, next to the package.
ROOT = Path(__file__).resolve().parent.parent

#: Bounds of the waits a scenario makes (seconds): a consumer's workers to register, every batch
#: to end, and a consumer to stop gracefully before it is stopped at once.
READY_TIMEOUT, BATCH_TIMEOUT, STOP_TIMEOUT = 30.0, 90.0, 30.0

Say = Callable[[str], None]


class ScenarioFailed(WorkqueueError):
    """Raised when a scenario ran but something it promises did not happen (a job failed, the
    producer never waited, the queues were not served in turn...)."""


@dataclass
class Run:
    """One job's end, as a scenario saw it: who produced it, which worker ran it, from which queue."""

    job_id: str
    producer: str
    queue: str
    worker: str
    consumer: str
    description: str
    outcome: str
    duration: float
    started_at: str


class Consumer:
    """A ``consumer_main.py`` process started for a scenario, its output kept in temporary files."""

    def __init__(self, label: str, queues: list[str], workers: int, order: str | None, redis_url: str | None) -> None:
        self.label, self.queues, self.workers = label, queues, workers
        if not (ROOT / "consumer_main.py").is_file():
            raise WorkqueueError(f"no consumer_main.py in {ROOT}: the demos run from a checkout of workqueue")
        args = [sys.executable, str(ROOT / "consumer_main.py"), "--workers", str(workers)]
        for queue in queues:
            args += ["--queue", queue]
        args += ["--order", order] if order else []
        args += ["--redis-url", redis_url] if redis_url else []
        self.command = " ".join(["consumer_main.py", *args[2:]])
        # Kept open for the consumer's lifetime: read and closed by stop(), so no `with` here.
        self._out: tuple[IO[str], IO[str]] = (tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+"))  # noqa: SIM115
        self.process = subprocess.Popen(
            args,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._out[0],
            stderr=self._out[1],
            text=True,
            start_new_session=True,
        )
        #: The prefix of its workers' names (``<host>.<pid>.w<n>``, see ``pool.ConsumerPool``).
        self.prefix = f"{socket.gethostname()}.{self.process.pid}."

    def worker_names(self, connection: redis.Redis) -> list[str]:
        """Its workers registered on its first queue."""
        keys = get_keys(Queue(self.queues[0], connection=connection))
        return sorted(k.split(":", 2)[2] for k in keys if k.split(":", 2)[-1].startswith(self.prefix))

    def wait_ready(self, connection: redis.Redis) -> list[str]:
        """Block until all its workers have registered; raises ScenarioFailed if it exits or takes too long."""
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ScenarioFailed(f"{self.label} exited at start ({self.exit_status()}): {self.last_error()}")
            names = self.worker_names(connection)
            if len(names) >= self.workers:
                return names
            time.sleep(0.05)
        raise ScenarioFailed(f"{self.label}'s workers did not register within {READY_TIMEOUT:g} s")

    def signal_stop(self) -> None:
        """SIGTERM: the first asks each worker to finish its job and exit, a second stops at once."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, until: float) -> bool:
        """Whether it has exited by ``until`` (a monotonic time)."""
        try:
            self.process.wait(max(0.0, until - time.monotonic()))
        except subprocess.TimeoutExpired:
            return False
        return True

    def kill(self) -> None:
        """SIGKILL its process group, if it still runs (its workers follow their pool: PDEATHSIG)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def exit_status(self) -> str:
        code = self.process.returncode
        if code is None:
            return "running"
        return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit {code}"

    def last_error(self) -> str:
        """The last line it wrote on stderr (or stdout), to say why it failed."""
        for stream in (self._out[1], self._out[0]):
            stream.flush()
            stream.seek(0)
            lines = [line for line in stream.read().splitlines() if line.strip()]
            if lines:
                return lines[-1]
        return "no output"

    def close(self) -> None:
        for stream in self._out:
            stream.close()


@dataclass
class Stage:
    """One scenario's run: its connection, its consumers, what it saw and what went wrong."""

    connection: redis.Redis
    redis_url: str | None
    say_line: Say
    started: float = field(default_factory=time.monotonic)
    consumers: list[Consumer] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    summaries: dict[str, batches.BatchSummary] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def say(self, text: str) -> None:
        with self._lock:
            self.say_line(f"[{time.monotonic() - self.started:5.2f}s] {text}")

    def problem(self, text: str) -> None:
        with self._lock:
            self.problems.append(text)

    # -- consumers --------------------------------------------------------------------------------

    def start_consumers(
        self, count: int, queues: list[str], *, workers: int = 1, order: str | None = None
    ) -> list[Consumer]:
        """Start ``count`` consumers at once, and return when every one's workers have registered."""
        started = []
        for _ in range(count):
            consumer = Consumer(f"consumer-{len(self.consumers) + 1}", queues, workers, order, self.redis_url)
            self.consumers.append(consumer)
            started.append(consumer)
            self.say(f"{consumer.label}: started (pid {consumer.process.pid}): {consumer.command}")
        for consumer in started:
            names = consumer.wait_ready(self.connection)
            self.say(f"{consumer.label}: ready, worker{'s' if len(names) > 1 else ''} {', '.join(names)}")
        return started

    def stop_consumers(self) -> None:
        """Stop every consumer, all at once: SIGTERM (each worker finishes its job); a second one
        after STOP_TIMEOUT or at a second Ctrl-C (at once, running jobs handed back); SIGKILL last,
        whatever happens. One that exited on its own before the end, or not with 0, is a problem."""
        self.stopping.set()
        running = [c for c in self.consumers if c.process.poll() is None]
        for consumer in self.consumers:
            if consumer not in running:
                self.problem(f"{consumer.label} exited on its own ({consumer.exit_status()}): {consumer.last_error()}")
        try:
            for consumer in running:
                self.say(f"{consumer.label}: stopping (SIGTERM: each worker finishes its current job, then exits)")
                consumer.signal_stop()
            try:
                deadline = time.monotonic() + STOP_TIMEOUT
                late = [c for c in running if not c.wait(deadline)]
            except KeyboardInterrupt:
                self.say("Ctrl-C again: stopping the consumers at once")
                late = running
            for consumer in late:
                consumer.signal_stop()
            deadline = time.monotonic() + 10.0
            for consumer in late:
                consumer.wait(deadline)
        finally:
            for consumer in running:
                consumer.kill()
        for consumer in running:
            self.say(f"{consumer.label}: stopped ({consumer.exit_status()})")
            if consumer.process.returncode != 0:
                self.problem(f"{consumer.label} stopped with {consumer.exit_status()}: {consumer.last_error()}")
        for consumer in self.consumers:
            consumer.close()

    def consumer_of(self, worker: str) -> str:
        for consumer in self.consumers:
            if worker.startswith(consumer.prefix):
                return f"{consumer.label}/{worker[len(consumer.prefix) :]}"
        return worker

    # -- producers --------------------------------------------------------------------------------

    def produce(
        self,
        label: str,
        queue: str,
        task: str,
        params: dict[str, Any],
        count: int,
        *,
        max_queued: int | None = None,
        on_wait: Callable[[str, int], None] | None = None,
        start: threading.Barrier | None = None,
    ) -> threading.Thread:
        """A producer thread: ``count`` jobs of ``task`` as one batch on ``queue`` through the
        producer's API (with its own connection), the batch followed from its first end."""
        batch_id = batches.new_id()
        self._thread(label, self._follow, label, batch_id)

        def body() -> None:
            connection, _ = connect(self.redis_url)
            call = producer.TaskCall.build(task, params)
            if start is not None:
                start.wait(READY_TIMEOUT)

            def waiting(queued: int) -> None:
                if self.stopping.is_set():
                    raise InterruptedError("the demo is stopping")
                if on_wait is not None:
                    on_wait(batch_id, queued)

            self.say(
                f"{label}: enqueueing {count} × {call.describe()} on {queue}"
                + (f" (--max-queued {max_queued})" if max_queued else "")
            )
            submission = producer.enqueue(
                connection, [call] * count, queue, max_queued=max_queued, on_wait=waiting, batch_id=batch_id
            )
            self.say(f"{label}: enqueued batch {batch_id}: {len(submission.jobs)} jobs on {queue}")

        return self._thread(label, body)

    def _follow(self, label: str, batch_id: str) -> None:
        """Say each of the batch's task ends as it happens: which worker ran it, from which queue."""
        deadline = time.monotonic() + BATCH_TIMEOUT
        while not self.connection.exists(batches.key(batch_id)):
            if self.stopping.is_set():
                return
            if time.monotonic() > deadline:
                self.problem(f"{label}'s batch {batch_id} was never enqueued")
                return
            time.sleep(0.05)

        def on_task(end: batches.TaskEnd) -> None:
            fields = self.connection.hmget(
                Job.key_for(end.job_id), "origin", "worker_name", "description", "started_at"
            )
            queue, worker, description, started_at = (decoded(v) if v else "?" for v in fields)
            run = Run(
                end.job_id,
                label,
                queue,
                worker,
                self.consumer_of(worker),
                description,
                end.outcome,
                end.duration,
                started_at,
            )
            with self._lock:
                self.runs.append(run)
            again = " (a second run, counted once)" if end.redelivery else ""
            self.say(
                f"{run.consumer} ran {description} from {queue} (job {end.job_id[:8]}, {label}): "
                f"{end.outcome} in {end.duration:.2f}s{again}"
            )

        remaining = max(1.0, deadline - time.monotonic())
        try:
            self.summaries[label] = batches.wait(self.connection, batch_id, on_task=on_task, timeout=remaining)
        except TimeoutError:
            self.problem(f"{label}'s batch {batch_id} did not end within {BATCH_TIMEOUT:g} s")

    def _thread(self, who: str, target: Callable[..., None], *args: object) -> threading.Thread:
        def guarded() -> None:
            try:
                target(*args)
            except Exception as exc:  # a thread's failure is the scenario's, said in one line
                if not self.stopping.is_set():
                    self.problem(f"{who}: {type(exc).__name__}: {exc}")

        thread = threading.Thread(target=guarded, daemon=True)
        self._threads.append(thread)
        thread.start()
        return thread

    def join(self, timeout: float = BATCH_TIMEOUT + READY_TIMEOUT) -> None:
        """Wait for every producer and follower thread (interruptible by Ctrl-C); raises
        ScenarioFailed at once if a consumer dies meanwhile, rather than waiting for its jobs."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            while thread.is_alive() and time.monotonic() < deadline:
                thread.join(0.2)
                for consumer in self.consumers:
                    if consumer.process.poll() is not None:
                        raise ScenarioFailed(
                            f"{consumer.label} exited on its own ({consumer.exit_status()}) "
                            f"before its jobs were done: {consumer.last_error()}"
                        )
            if thread.is_alive():
                self.problem("a producer or follower did not finish in time")
                return

    # -- the end ----------------------------------------------------------------------------------

    def check_batches(self, expected: dict[str, tuple[str, int]]) -> None:
        """Every producer's batch ended, all finished, each of its jobs run from its own queue."""
        for label, (queue, count) in expected.items():
            summary = self.summaries.get(label)
            if summary is None:
                continue  # its problem is already said
            if (summary.total, summary.finished, summary.failed) != (count, count, 0):
                failures = "; ".join(f"{f.job_id[:8]}: {f.detail}" for f in summary.failures[:3])
                self.problem(
                    f"{label}: {summary.finished} of {count} finished, {summary.failed} failed "
                    f"({failures or 'not all ended'})"
                )
            wrong = [r.job_id for r in self.runs if r.producer == label and r.queue != queue]
            if wrong:
                self.problem(f"{label}: {len(wrong)} jobs ran from another queue than {queue}")
