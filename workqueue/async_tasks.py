"""Catalogue tasks declared ``async def``: run on the process's own asyncio event loop.

A horse runs its jobs in threads (``--concurrency N``: one slot thread per running job) or in its
main thread (``--concurrency 1``). A job of an ``async def`` task still takes one slot, but its
coroutine runs on one event loop the horse keeps, in a thread of its own, started at its first such
job: so the coroutines of the jobs running at once share that loop, and what a task keeps on it (an
``httpx.AsyncClient`` and its connections) serves its next jobs. The job's own thread waits for its
coroutine's end, and what RQ raises in that thread meanwhile reaches it at once: the job's timeout
(SIGALRM, which interrupts the main thread's wait, or the horse's timekeeper in a slot thread, which
wakes the wait with :func:`wake` as it raises) or its stop cancels the coroutine (``CancelledError``
at its ``await``), waits for it to end, and ends the job as for any task. (Waiting in short slices
instead would wake every slot thread many times a second, on the CPU the jobs share.) A coroutine
that ignores the cancellation keeps its thread waiting, so the job counts as one ignoring its
timeout or stop: its horse is killed, as for a task stuck in a blocking call. A coroutine that
blocks the loop (a blocking call without ``await``) holds up the others on it; write such work as a
plain function, which runs in its own thread.

Inside the coroutine, :func:`current_job` is the job (RQ's ``get_current_job`` is per thread, and
the loop's thread runs no job of its own), so ``report_progress`` and the per-key limits work there.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from rq import get_current_job
from rq.job import Job

#: Longest wait (seconds) of a job's thread for its coroutine before it looks again, a safety net
#: only: the coroutine's end and :func:`wake` end the wait at once. (Longer than the 3 s a job has to
#: heed a stop or timeout before its horse is killed, so a raise that needed the net would show.)
SLICE = 5.0

T = TypeVar("T")

#: The job whose coroutine is running, in the coroutine's own context (see :func:`current_job`).
_running_job: contextvars.ContextVar[Job | None] = contextvars.ContextVar("workqueue_async_job", default=None)

#: The wake of each thread waiting for its coroutine, by thread id (see :func:`wake`).
_waiting: dict[int, threading.Event] = {}

#: The process's loop and the pid that started it (a forked child starts its own: threads do not
#: survive a fork), under ``_starting``.
_loop: tuple[int, asyncio.AbstractEventLoop] | None = None
_starting = threading.Lock()


def current_job() -> Job | None:
    """The job the calling code runs for: RQ's ``get_current_job``, or, inside the coroutine of an
    ``async def`` task (on the loop's thread), that coroutine's job. None outside a job."""
    return get_current_job() or _running_job.get()


def run(coroutine: Coroutine[Any, Any, T], job: Job | None = None) -> T:
    """Run ``coroutine`` (of ``job``) on the process's loop and return its result or raise its
    exception, waiting in the calling thread. An exception raised in this thread meanwhile (a
    timeout, a stop) cancels the coroutine; once the coroutine has ended, that exception is raised."""
    loop = event_loop()
    context = contextvars.copy_context()
    context.run(_running_job.set, job)
    woken = threading.Event()  # set at the coroutine's end, and by wake()
    started: list[asyncio.Task[T]] = []
    ended: list[bool] = []

    def start() -> None:
        task = loop.create_task(coroutine, context=context)
        task.add_done_callback(end)
        started.append(task)

    def end(_task: asyncio.Task[T]) -> None:
        ended.append(True)  # before the wake: the waiter reads it once woken
        woken.set()

    def cancel() -> None:  # runs after start(): the loop runs its callbacks in order
        started[0].cancel()

    def wait_for_end() -> None:
        while not ended:
            woken.wait(SLICE)
            if not ended:
                woken.clear()  # a wake() for a raise, now delivered, or none; the end is read again first

    me = threading.get_ident()
    _waiting[me] = woken
    try:
        loop.call_soon_threadsafe(start)
        try:
            wait_for_end()
        except BaseException:
            loop.call_soon_threadsafe(cancel)
            wait_for_end()  # a coroutine ignoring it holds its job (and slot) until its horse is killed
            raise
    finally:
        _waiting.pop(me, None)
    return started[0].result()


def wake(thread_id: int) -> None:
    """Wake the thread ``thread_id`` if it waits for its coroutine, so that an exception just raised
    in it (``PyThreadState_SetAsyncExc``, delivered only as it runs Python code) is raised now."""
    woken = _waiting.get(thread_id)
    if woken is not None:
        woken.set()


def event_loop() -> asyncio.AbstractEventLoop:
    """The process's loop for async tasks, running in a daemon thread: started on first use."""
    global _loop
    with _starting:
        if _loop is None or _loop[0] != os.getpid():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="async-tasks", daemon=True).start()
            _loop = (os.getpid(), loop)
        return _loop[1]
