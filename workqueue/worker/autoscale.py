"""When the consumer's pool grows or shrinks (``consumer_main.py --workers MIN-MAX``).

It grows when the backlog (jobs waiting on its queues) passes ``backlog`` per worker: to one worker
per ``backlog`` waiting jobs, at once, at most ``maximum``. It shrinks one worker at a time, and
only an idle one: a worker idle for ``idle`` seconds while nothing waits is stopped gracefully (a
warm stop, as Ctrl-C's first: a job it claims meanwhile it finishes first), down to ``minimum``.
The decisions are pure (:meth:`Autoscaler.decide`); the pool carries them out and says why.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import redis

from workqueue.errors import BadInput
from workqueue.settings import (
    MAX_WORKERS,
    MIN_WORKERS,
    SCALE_IN_IDLE,
    SCALE_IN_IDLE_ENV,
    SCALE_UP_BACKLOG,
    SCALE_UP_BACKLOG_ENV,
)

#: A hash of the scaling pools (field: the pool's name; value: JSON of its bounds, workers and last
#: scaling, with the time it was written), for the dashboard. A pool rewrites its field every sweep
#: and removes it when it ends; readers skip fields older than POOL_LAPSE seconds (a pool that died).
POOLS_KEY = "workqueue:pools"
POOL_LAPSE = 15.0

_RANGE = re.compile(r"\s*(\S+?)\s*-\s*(\S+)\s*")


class WorkerState(Protocol):
    name: str
    state: str


@dataclass(frozen=True)
class Scaling:
    """The pool's bounds and when it moves between them."""

    minimum: int
    maximum: int
    #: Waiting jobs per worker above which the pool grows.
    backlog: float = SCALE_UP_BACKLOG
    #: Seconds a worker stays idle, with nothing waiting, before it is stopped.
    idle: float = SCALE_IN_IDLE

    @classmethod
    def from_env(cls, minimum: int, maximum: int) -> Scaling:
        """The bounds given, the thresholds from the environment (else the settings' defaults)."""
        try:
            backlog = float(os.environ.get(SCALE_UP_BACKLOG_ENV) or SCALE_UP_BACKLOG)
            idle = float(os.environ.get(SCALE_IN_IDLE_ENV) or SCALE_IN_IDLE)
        except ValueError as exc:
            raise BadInput(
                f"{SCALE_UP_BACKLOG_ENV} and {SCALE_IN_IDLE_ENV} are numbers of jobs and seconds: {exc}"
            ) from None
        if backlog <= 0 or idle < 0:
            raise BadInput(f"{SCALE_UP_BACKLOG_ENV} must be above 0 and {SCALE_IN_IDLE_ENV} at least 0")
        return cls(minimum, maximum, backlog, idle)

    @property
    def fixed(self) -> bool:
        return self.minimum == self.maximum

    def describe(self) -> str:
        return str(self.minimum) if self.fixed else f"{self.minimum}-{self.maximum}"


def parse_range(text: str) -> tuple[int, int] | None:
    """``"2-10"`` as (2, 10); None if ``text`` is not a range (a single number, say). BadInput for a
    range out of bounds or upside down, in one line."""
    match = _RANGE.fullmatch(text)
    if match is None:
        return None
    low, high = match.groups()
    if not (low.isdigit() and high.isdigit()):
        raise BadInput(f"{text!r} is not a range of worker counts: MIN-MAX, e.g. 2-10")
    minimum, maximum = int(low), int(high)
    if not MIN_WORKERS <= minimum <= maximum <= MAX_WORKERS:
        raise BadInput(
            f"{text!r}: a range of workers goes from at least {MIN_WORKERS} up to at most {MAX_WORKERS}, "
            "the smaller first (e.g. 2-10)"
        )
    return minimum, maximum


@dataclass(frozen=True)
class Decision:
    """Grow to ``target`` workers, or stop ``retire`` (an idle worker) to get there; ``reason`` says why."""

    target: int
    reason: str
    retire: str | None = None


@dataclass
class Autoscaler:
    """Remembers since when each worker is idle, and decides."""

    scaling: Scaling
    idle_since: dict[str, float] = field(default_factory=dict)

    def decide(
        self, workers: Sequence[WorkerState], current: int, waiting: int, retiring: set[str], now: float
    ) -> Decision | None:
        """What to do now, for ``current`` workers (the pool's target, without those ``retiring``)
        whose states are ``workers``, with ``waiting`` jobs on their queues."""
        for worker in workers:
            if worker.state == "idle":
                self.idle_since.setdefault(worker.name, now)
            else:
                self.idle_since.pop(worker.name, None)
        live = {worker.name for worker in workers}
        for name in set(self.idle_since) - live:
            del self.idle_since[name]
        scaling = self.scaling
        # Workers still finishing a job after their stop count against the maximum until they exit.
        room = scaling.maximum - len(retiring)
        if current < room and waiting > scaling.backlog * current:
            target = min(room, max(current + 1, math.ceil(waiting / scaling.backlog)))
            return Decision(target, f"scaled up to {target}: {waiting} waiting for {current} workers")
        if current > scaling.minimum and waiting == 0:
            idle = [
                (since, name)
                for name, since in self.idle_since.items()
                if name not in retiring and now - since >= scaling.idle
            ]
            if idle:
                since, name = min(idle)
                self.idle_since.pop(name)
                return Decision(
                    current - 1,
                    f"scaled down to {current - 1}: {name} idle for {now - since:.0f} s, nothing waiting",
                    retire=name,
                )
        return None


def publish(
    connection: redis.Redis, name: str, bounds: str, workers: int, busy: int, waiting: int, scaled: str
) -> None:
    """Write the pool's state for the dashboard (:data:`POOLS_KEY`)."""
    state = {"bounds": bounds, "workers": workers, "busy": busy, "waiting": waiting, "scaled": scaled}
    connection.hset(POOLS_KEY, name, json.dumps({**state, "at": time.time()}))


def withdraw(connection: redis.Redis, name: str) -> None:
    connection.hdel(POOLS_KEY, name)


def live_pools(connection: redis.Redis) -> list[dict[str, object]]:
    """The scaling pools that wrote their state within POOL_LAPSE seconds, by name."""
    pools = []
    for name, raw in sorted(connection.hgetall(POOLS_KEY).items()):
        try:
            state = json.loads(raw)
        except ValueError:
            continue
        if isinstance(state, dict) and time.time() - float(state.get("at", 0)) < POOL_LAPSE:
            pools.append({"name": name.decode() if isinstance(name, bytes) else name, **state})
    return pools
