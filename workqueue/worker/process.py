"""The worker process's ties to its pool: it dies with the pool (PDEATHSIG, and a check that its
parent is still the pool), it says, by its exit code, whether it was stopped on purpose, and no
stop the pool sends it is lost while it starts.

A Ctrl-C reaches the pool, which forwards it to each worker (SIGINT; a second one: SIGTERM). A
worker may get it at any moment of its start-up: just forked, still running the pool's handlers
(which would take the stop for the pool's own and drop it), or later while RQ builds it, forks its
scheduler and registers it, before RQ's handlers are in place (where Python's KeyboardInterrupt
would skip RQ's teardown: a traceback at the terminal, and the worker then waiting forever at exit
for its scheduler, which nobody stopped, and the consumer for it). So the pool forks each worker
with the stop signals blocked (:func:`stops_held`); the worker, before it unblocks them
(:func:`hold_stops_while_starting`), notes a SIGINT instead of raising, and acts on it once RQ's
loop runs (:func:`stop_noted`: it stops before its first job, with RQ's teardown). A SIGTERM while
it starts stops it at once, as before: it holds no job yet.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any

from workqueue import outage

#: Exit code of a worker process stopped on purpose (by a kill script), as opposed to one that died.
STOPPED_ON_PURPOSE = 3

_PR_SET_PDEATHSIG = 1
_stopped_on_purpose = False
_pool_pid: int | None = None
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
_stop_noted = False


@contextlib.contextmanager
def stops_held() -> Iterator[None]:
    """Block SIGINT and SIGTERM in this thread meanwhile: a worker forked inside starts with them
    blocked, and they wait for it (:func:`hold_stops_while_starting`). The pool's own stop, if one
    comes meanwhile, is delivered to it once this ends (or at once to another of its threads)."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def hold_stops_while_starting() -> None:
    """In a worker process just forked by :func:`stops_held`: the stop signals' start-up handlers
    (a SIGINT noted for :func:`stop_noted`, a SIGTERM stops at once), then unblocked, so that one
    sent meanwhile is handled now."""
    signal.signal(signal.SIGINT, _note_stop)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


def _note_stop(signum: int, frame: Any) -> None:
    global _stop_noted
    _stop_noted = True
    outage.request_stop()  # a start-up waiting out a Redis outage gives up soon


def stop_noted() -> bool:
    """Whether a SIGINT came while this worker process was starting (:func:`hold_stops_while_starting`)."""
    return _stop_noted


def die_with_parent(sig: int) -> None:
    """Have the kernel send ``sig`` to this process when its parent dies (Linux; elsewhere a no-op)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)


def serve_pool(pid: int) -> None:
    """This process is a worker of the pool process ``pid``. Should it be re-parented (the pool
    died), Redis commands are no longer retried and the worker's loops stop it: a second mechanism
    beside PDEATHSIG. Only this process: its horse and scheduler are not abandoned by the check."""
    global _pool_pid
    _pool_pid = pid
    me = os.getpid()
    outage.abandon_when(lambda: os.getpid() == me and os.getppid() != pid)


def pool_gone() -> bool:
    """Whether this worker's pool process has died (the worker was re-parented)."""
    return _pool_pid is not None and os.getppid() != _pool_pid


def mark_stopped_on_purpose() -> None:
    """This worker was stopped by a command (a kill script): the pool must not replace it."""
    global _stopped_on_purpose
    _stopped_on_purpose = True


def stopped_on_purpose() -> bool:
    """Whether this process's worker was stopped by a command, not by a crash or the pool."""
    return _stopped_on_purpose
