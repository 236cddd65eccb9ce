"""Idle bells: an idle worker woken at once by a job its wait does not watch.

An idle worker blocks in a BLMOVE on one list: the normal level of its first open queue. A job
pushed there reaches it at once; a job of its other queues, or of another priority level, would
wait for its next look at all its queues. So each claim that finds nothing notes the worker as
idle (``lua/claim.lua``): in its first open queue's *blocked* set and in every other queue's *deaf*
set. Whatever pushes a job (the producer's enqueue, RQ's enqueue of an existing job, a hand-back)
rings the bell of one such worker per job (``lua/bell.lua``): a ``wake`` on the worker's own
command channel, which ends its wait (``worker.idle_bell``). The looks stay, rarer
(``settings.IDLE_LOOK_GAP``), for what no bell announces: a job pushed by a plain RQ client, or a
bell lost with a connection.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import redis

from workqueue import lua

#: The command a bell publishes on a worker's channel (RQ's ``rq:pubsub:<name>``).
WAKE_COMMAND = "wake"

RING_SCRIPT = lua.script("bell") + lua.script("bell_ring")


def blocked_key(queue: str) -> str:
    """The set of idle workers blocked on ``queue``'s normal list."""
    return f"workqueue:bell:{queue}:blocked"


def deaf_key(queue: str) -> str:
    """The set of idle workers of ``queue`` blocked elsewhere (on another queue's list)."""
    return f"workqueue:bell:{queue}:deaf"


def ring(pipe: Any, queue: str, at_level: bool) -> None:
    """Queue on ``pipe`` the bell for one job just pushed onto ``queue`` (``at_level``: onto a
    priority level's list, not RQ's own)."""
    pipe.eval(RING_SCRIPT, 0, queue, 0 if at_level else 1, 1 if at_level else 0)


def forget(connection: redis.Redis, worker: str, queues: Iterable[str]) -> None:
    """Take ``worker`` out of the idle sets of ``queues`` (a worker leaving)."""
    pipe = connection.pipeline(transaction=False)
    for queue in queues:
        pipe.srem(blocked_key(queue), worker)
        pipe.srem(deaf_key(queue), worker)
    pipe.execute()
