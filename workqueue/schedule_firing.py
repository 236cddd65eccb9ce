"""Firing periodic schedules (``workqueue.schedules``): the loop every consumer runs, and the
history of the ticks it fired.

Each consumer's pool process polls the schedules (``Firer``, a supervised helper thread of
``consumer_main.py``); for a tick that is due it claims the tick with one Lua script
(``lua/schedule_claim.lua``): a compare-and-set of the schedule's last fired tick, so the first
claimer wins and every other one, for that tick or an older one, is refused. Ticks are computed on
Redis's clock, so consumers whose own clocks disagree still agree on which tick is due.

The claim also marks the tick's batch pending until it is enqueued; a consumer that dies in between
leaves it pending, and another one enqueues it after PENDING_GRACE seconds (the batch goes in
whole or not at all, so whether it exists says whether it must).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass
from datetime import datetime

import redis

from workqueue import batches, lua, producer
from workqueue.replies import decoded_members
from workqueue.schedules import Stored, history_key, key, load_all, redis_now

log = logging.getLogger(__name__)

#: How often each consumer looks for due ticks (seconds): a tick fires within this of its time.
POLL_INTERVAL = 0.25
#: How many fired ticks each schedule's history keeps.
HISTORY = 100
#: Seconds after which a tick claimed but not enqueued (its consumer died in between) is enqueued by
#: another consumer: well past what enqueueing one job takes on the firer's fail-fast client.
PENDING_GRACE = 10.0

_CLAIM = lua.script("schedule_claim")
_PENDING = lua.script("schedule_pending")


@dataclass
class Fired:
    """One fired tick: of which schedule, the tick's time, its batch, and the consumer that fired it."""

    name: str
    tick: float
    batch_id: str
    by: str = ""


def history(conn: redis.Redis, name: str) -> list[Fired]:
    """The schedule's last fired ticks, newest first."""
    entries = []
    for entry in decoded_members(conn.lrange(history_key(name), 0, -1)):
        tick, batch_id, by = entry.split(" ", 2)
        entries.append(Fired(name, float(tick), batch_id, by))
    return entries


class Firer:
    """The loop a consumer runs: every POLL_INTERVAL, claim each due tick and enqueue its batch."""

    def __init__(self, conn: redis.Redis, poll: float = POLL_INTERVAL, name: str | None = None) -> None:
        self.conn = conn
        self.poll = poll
        #: Who fired a tick, in the history: the consumer's ``<host>.<pid>``, as its pool is named.
        self.name = name or f"{socket.gethostname()}.{os.getpid()}"
        self._failing = False
        #: Schedules that could not be fired, with the version seen, so each is logged once.
        self._broken: dict[str, str] = {}

    def fire_due(self) -> list[Fired]:
        """Fire every tick that is due now and that no other consumer has claimed. A schedule that
        cannot be fired (a time zone or task this machine lacks) is logged, once, and the others fire."""
        now = redis_now(self.conn)
        fired = []
        for stored in load_all(self.conn, skip_bad=True):
            try:
                done = self._fire(stored, now)
            except redis.RedisError:
                raise
            except Exception as exc:
                if self._broken.get(stored.name) != stored.version:
                    log.error("schedule %s cannot be fired here (%s: %s)", stored.name, type(exc).__name__, exc)
                self._broken[stored.name] = stored.version
                continue
            self._broken.pop(stored.name, None)
            if done is not None:
                fired.append(done)
        return fired

    def _fire(self, stored: Stored, now: float) -> Fired | None:
        """Claim the schedule's due tick, if it has one and no one else got it, and enqueue its batch."""
        if stored.pending is not None and now - stored.pending_at >= PENDING_GRACE:
            self._take_over(stored, stored.pending, now)
        tick = stored.due_tick(now)
        if tick is None:
            return None
        call = stored.schedule.call()  # validated here first: a tick is claimed only if it can be enqueued
        batch_id = batches.new_id()
        keys = (key(stored.name), history_key(stored.name))
        claimed = self.conn.eval(_CLAIM, 2, *keys, repr(tick), batch_id, repr(now), stored.version, self.name, HISTORY)
        if not claimed:
            return None  # another consumer fired it, or it changed meanwhile
        producer.enqueue(self.conn, [call], stored.schedule.queue, batch_id=batch_id)
        self.conn.eval(_PENDING, 1, key(stored.name), batch_id, "done")
        log.info("schedule %s: tick %s fired as batch %s", stored.name, _iso(tick), batch_id)
        return Fired(stored.name, tick, batch_id, self.name)

    def _take_over(self, stored: Stored, batch_id: str, now: float) -> None:
        """Enqueue the batch of a tick whose claimer died before enqueueing it (once: the batch is
        enqueued whole or not at all, so whether its record exists tells which)."""
        if not self.conn.eval(_PENDING, 1, key(stored.name), batch_id, "take", repr(now), PENDING_GRACE):
            return
        if not self.conn.exists(batches.key(batch_id)):
            producer.enqueue(self.conn, [stored.schedule.call()], stored.schedule.queue, batch_id=batch_id)
            log.warning("schedule %s: enqueued batch %s, claimed by a consumer that died first", stored.name, batch_id)
        self.conn.eval(_PENDING, 1, key(stored.name), batch_id, "done")

    def run(self, stop: threading.Event) -> None:
        """Until ``stop`` is set; a Redis error is logged once and waited out."""
        while not stop.is_set():
            try:
                self.fire_due()
                if self._failing:
                    log.warning("schedules: Redis answers again; firing due ticks")
                self._failing = False
            except redis.RedisError as exc:
                if not self._failing:
                    log.warning("schedules: cannot reach Redis to fire them (%s); retrying", exc)
                self._failing = True
            stop.wait(self.poll)


def _iso(when: float) -> str:
    return datetime.fromtimestamp(when).astimezone().isoformat(timespec="seconds")
