"""The work horse a worker keeps: one child process that runs job after job, instead of RQ's fork
per job (each fork costs tens of milliseconds, mostly the child's page faults).

Isolation stays: the horse is its own process group, dies with its worker (PDEATHSIG), and a job
that crashes it (a segfault, ``os._exit``, a kill) takes only the horse, which the worker replaces.
It is also replaced after a failed job (a task interrupted by its timeout may leave its module in
a bad state), after HORSE_MAX_JOBS jobs, and when its memory passes HORSE_MAX_RSS_MB (a leak).

The worker and its horse talk over two pipes, each message a dict in ``marshal``'s format (plain
data only: it builds no objects of other types and runs nothing) after its length: the worker sends
``{"job", "queue", "execution", "started_at", "hash"}`` (the job's hash as the worker read it, bytes
to bytes, so the horse need not read it again), the horse answers ``{"job", "ok": True|False|None,
"peak_rss_mb"}`` once the job has ended and been recorded (RQ's ``perform_job``), or with its end handed
to the worker to write (``"ends"``: see ``worker.held_ends``), naming the job: a
horse of a worker with ``--concurrency N`` (:func:`serve_threads`) runs up to N jobs at once, in a
pool of N threads, and the worker may send it ``{"stop": job id, "superseded"}`` to stop one of them. End
of file means the horse is gone. (JSON cost a tenth of a no-op job's work, in the hash's encoding to text and back.)
"""

from __future__ import annotations

import logging
import marshal
import os
import queue
import resource
import select
import signal
import threading
from collections.abc import Callable
from typing import Any

from workqueue.settings import (
    HORSE_MAX_JOBS_DEFAULT,
    HORSE_MAX_JOBS_ENV,
    HORSE_MAX_RSS_MB_DEFAULT,
    HORSE_MAX_RSS_MB_ENV,
)

log = logging.getLogger(__name__)

#: Jobs one horse runs before it is replaced, and the resident memory (MB) that replaces it sooner
#: (``WORKQUEUE_HORSE_MAX_JOBS`` and ``WORKQUEUE_HORSE_MAX_RSS_MB`` in the worker's environment).
HORSE_MAX_JOBS = int(os.environ.get(HORSE_MAX_JOBS_ENV) or HORSE_MAX_JOBS_DEFAULT)
HORSE_MAX_RSS_MB = int(os.environ.get(HORSE_MAX_RSS_MB_ENV) or HORSE_MAX_RSS_MB_DEFAULT)

_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}

#: What :meth:`Horse.wait` returns when the horse has not answered yet.
WAITING = object()


class Horse:
    """The worker's side of a horse process."""

    def __init__(self, serve: Callable[[int, int], Any]) -> None:
        """Fork a horse that runs ``serve(inbox_fd, outbox_fd)`` (which must never return)."""
        to_horse_r, to_horse_w = os.pipe()
        from_horse_r, from_horse_w = os.pipe()
        # A stop signal is held back over the fork: an idle worker's handler raises, and raised
        # from the fork's own handlers (logging's) it would be printed and lost, the stop with it.
        # Blocking it holds it back from this thread only: another thread (RQ's pubsub thread) may
        # take it, and Python then runs the handler in this thread anyway. So the handlers are also
        # swapped for one that notes the signal, and the stop is raised again once the fork is done.
        caught: list[int] = []
        handlers = {signum: signal.signal(signum, lambda signum, _: caught.append(signum)) for signum in _STOP_SIGNALS}
        held = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            pid = os.fork()
        except BaseException:
            _restore(handlers, held, caught)
            raise
        if pid == 0:  # the horse
            os.close(to_horse_w)
            os.close(from_horse_r)
            try:
                os.setpgrp()
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # as RQ's horse: Ctrl-C is for the worker
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, held)
                serve(to_horse_r, from_horse_w)
            except BaseException:  # its worker then says which jobs it dropped; this says why
                log.exception("Work horse %d failed", os.getpid())
            finally:
                os._exit(1)
        os.close(to_horse_r)
        os.close(from_horse_w)
        self.pid = pid
        self.jobs = 0
        self._inbox = to_horse_w
        self._outbox = from_horse_r
        self._pending = b""
        self._sending = threading.Lock()
        try:
            _restore(handlers, held, caught)  # a stop held back raises here, if at all
        except BaseException:
            self.retire()  # the worker is stopping: this horse would run nothing
            raise

    def send(self, message: dict) -> None:
        """Hand the horse its next job (a dict of plain data; see the module's docstring), or a
        stop; from any thread of the worker (its command listener sends stops)."""
        data = _frame(message)
        with self._sending:
            while data:
                data = data[os.write(self._inbox, data) :]
            if "stop" not in message:
                self.jobs += 1

    def wait(self, timeout: float) -> Any:
        """The horse's answer, WAITING if none came within ``timeout`` seconds, or None if the horse
        is gone (its end of the pipe closed: it died or exited)."""
        while (length := _length(self._pending)) is None or len(self._pending) < 4 + length:
            ready, _, _ = select.select([self._outbox], [], [], timeout)
            if not ready:
                return WAITING
            chunk = os.read(self._outbox, 4096)
            if not chunk:
                return None
            self._pending += chunk
        message, self._pending = self._pending[4 : 4 + length], self._pending[4 + length :]
        return marshal.loads(message)

    def worn_out(self, answer: dict) -> bool:
        """Whether to replace it before the next job: it has run enough, or grown too big (its
        peak resident memory, as its last ``answer`` gave it)."""
        return self.jobs >= HORSE_MAX_JOBS or answer.get("peak_rss_mb", 0) > HORSE_MAX_RSS_MB

    def retire(self) -> None:
        """Close its pipe (it exits when it reads the end) and reap it; kill it if it lingers."""
        self._close()
        try:
            for _ in range(50):
                if os.waitpid(self.pid, os.WNOHANG)[0]:
                    return
                select.select([], [], [], 0.02)
            os.killpg(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ChildProcessError, ProcessLookupError):
            pass  # already reaped (a cold stop waits for it itself)

    def reap(self) -> tuple[int, int, Any]:
        """Wait for a horse that has gone: (pid, wait status, rusage), as RQ's wait_for_horse."""
        self._close()
        try:
            return os.wait4(self.pid, 0)
        except ChildProcessError:
            return self.pid, 0, None

    def _close(self) -> None:
        for fd in (self._inbox, self._outbox):
            try:
                os.close(fd)
            except OSError:
                pass


def serve(
    inbox: int,
    outbox: int,
    run: Callable[[dict], bool | None],
    on_exit: Callable[[], object] = lambda: None,
    tick: Callable[[], float | None] = lambda: None,
    handed: Callable[[], list[dict[str, Any]]] = list,
) -> None:
    """The horse's loop: run each job the worker sends, answer once it has ended; exit when the
    worker closes the pipe (or dies), calling ``on_exit()`` first. Between jobs ``tick()`` is
    called as often as it asks (its answer: the seconds until the next call, None: no call needed).
    ``handed()``: the job's end, if the horse handed it to the worker to write (``"ends"`` in the answer)."""
    while (message := _receive(inbox, tick)) is not None:
        ok = run(message)
        answer = {"job": message.get("job"), "ok": ok, "peak_rss_mb": peak_rss_mb()}
        ends = handed()
        if ends:
            answer["ends"] = ends
        os.write(outbox, _frame(answer))
        if ok is None:
            on_exit()
            os._exit(1)
    on_exit()
    os._exit(0)


def _receive(inbox: int, tick: Callable[[], float | None]) -> dict | None:
    """The next message on ``inbox``, None at its end (the worker closed it or died); ``tick()``
    is called while none comes, as :func:`serve` says."""
    while not select.select([inbox], [], [], tick())[0]:
        pass
    header = _read_exactly(inbox, 4)
    length = _length(header)
    if length is None:
        return None
    body = _read_exactly(inbox, length)
    if len(body) < length:
        return None
    return marshal.loads(body)


def _read_exactly(fd: int, size: int) -> bytes:
    """``size`` bytes from ``fd``, fewer only at its end."""
    data = b""
    while len(data) < size and (chunk := os.read(fd, size - len(data))):
        data += chunk
    return data


def _restore(handlers: dict[signal.Signals, Any], held: set[int | signal.Signals], caught: list[int]) -> None:
    """Put back the stop signals' handlers and mask as they were before the fork, then deliver the
    stops that came meanwhile (each signal once), so that the worker's own handler acts on them."""
    try:  # a stop's own handler may run (and raise) as it is put back: the mask is put back all the same
        for signum, handler in handlers.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)  # None: not set from Python
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)  # a stop held back by the mask is delivered here
    for caught_signal in dict.fromkeys(caught):
        signal.raise_signal(caught_signal)


def serve_threads(
    inbox: int,
    outbox: int,
    run: Callable[[dict], bool | None],
    stop: Callable[[str, bool], None],
    slots: int,
    on_exit: Callable[[], object] = lambda: None,
    settle: Callable[[str], None] = lambda job_id: None,
) -> None:
    """The loop of a horse that runs up to ``slots`` jobs at once (``--concurrency``), answering
    for each job as it ends; ``{"stop": job id, "superseded"}`` calls ``stop`` (which raises in that
    job's thread; superseded: a run handed back meanwhile). A job the horse could not run (``ok``
    None) ends the horse, as in :func:`serve`: the worker then hands back the others. Exits when the
    worker closes the pipe, calling ``on_exit()`` first.

    The jobs run in a pool of slot threads, started as needed up to ``slots`` and kept: a thread per
    job cost a scrape more CPU than its own work. After each job, ``settle(job id)`` is called in its
    thread (again until it completes) before its answer is sent: it must leave nothing meant for that
    job (a stop, a timeout) raised or pending in the thread, which runs other jobs next."""
    writing = threading.Lock()
    waiting: queue.SimpleQueue[dict] = queue.SimpleQueue()
    counts = threading.Lock()
    idle = started = 0

    def one(message: dict) -> None:
        nonlocal idle
        ok: bool | None = False
        try:
            ok = run(message)
        except BaseException:  # a stop raised in the thread just as its job ended: it has ended
            ok = False
        while True:
            try:
                settle(message["job"])
                break
            except BaseException:  # raised before settle dropped it: nothing is pending once it completes
                continue
        answer = _frame({"job": message["job"], "ok": ok, "peak_rss_mb": peak_rss_mb()})
        with counts:  # idle before answering: the next job the answer lets the worker send takes this slot
            idle += 1
        with writing:
            os.write(outbox, answer)
        if ok is None:
            on_exit()
            os._exit(1)

    def slot() -> None:
        current = threading.current_thread()
        while True:
            message = waiting.get()
            current.name = f"job {message['job']}"
            one(message)

    with os.fdopen(inbox, "rb") as messages:
        while (length := _length(messages.read(4))) is not None:
            message = marshal.loads(messages.read(length))
            if "stop" in message:
                stop(message["stop"], bool(message.get("superseded")))
                continue
            with counts:
                if idle:
                    idle -= 1
                    start = False
                else:  # the worker sends no more than ``slots`` at once: never more threads than that
                    start = started < slots
                    started += start
            waiting.put(message)
            if start:
                threading.Thread(target=slot, name=f"job {message['job']}", daemon=True).start()
    on_exit()
    os._exit(0)


def _frame(message: dict) -> bytes:
    body = marshal.dumps(message)
    return len(body).to_bytes(4, "big") + body


def _length(data: bytes) -> int | None:
    """The length of the message that ``data`` starts with, if its 4-byte header is there."""
    return int.from_bytes(data[:4], "big") if len(data) >= 4 else None


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB: one system call, cheap enough to ask after
    every job (reading /proc costs more than a no-op job)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
