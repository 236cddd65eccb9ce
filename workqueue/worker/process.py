"""The worker process's ties to its pool: it dies with the pool (PDEATHSIG, and a check that its
parent is still the pool), and it says, by its exit code, whether it was stopped on purpose."""

from __future__ import annotations

import ctypes
import os
import sys

from workqueue import outage

#: Exit code of a worker process stopped on purpose (by a kill script), as opposed to one that died.
STOPPED_ON_PURPOSE = 3

_PR_SET_PDEATHSIG = 1
_stopped_on_purpose = False
_pool_pid: int | None = None


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
