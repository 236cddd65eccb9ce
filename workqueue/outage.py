"""Redis outages, in one place: which errors are an outage to ride out (not answering, or refusing
writes: OOM, MISCONF, READONLY, LOADING), how to say each in one line, a retry that a stop signal
cuts short, and the two checks against silent loss: an evicting ``maxmemory-policy``, and a Redis
that came back empty (the data mark).

The worker, the pool, the producer, the dashboard and the gateway all ask :func:`is_outage` and
print :func:`describe`; nobody else matches Redis's error texts.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis
from redis.retry import Retry

from workqueue.errors import RedisLostData, RedisMisconfigured
from workqueue.replies import as_bytes
from workqueue.settings import OUTAGE_STOP_GRACE

#: Error codes with which Redis refuses a command for a while, and what each means.
REFUSALS = {
    "OOM": "out of memory: maxmemory reached",
    "MISCONF": "it cannot persist to disk (MISCONF)",
    "READONLY": "it is a read-only replica (READONLY)",
    "LOADING": "it is loading its data (LOADING)",
    "BUSY": "a script is running too long (BUSY)",
    "MASTERDOWN": "its master is down (MASTERDOWN)",
    "NOREPLICAS": "not enough replicas (NOREPLICAS)",
}
# The code starts the reply, follows a pipeline's "caused error: ", or a script's "-" (Redis 6).
_CODE = re.compile(r"(?:^|caused error: |: -)(" + "|".join(REFUSALS) + r")\b")
_CLASSES: tuple[tuple[type, str], ...] = (
    (redis.exceptions.OutOfMemoryError, "OOM"),
    (redis.exceptions.ReadOnlyError, "READONLY"),
    (redis.exceptions.BusyLoadingError, "LOADING"),
)

#: The key that marks a Redis as holding workqueue's data (see :class:`DataMark`).
MARK_KEY = "workqueue:mark"

_stop_requested_at: float | None = None


def _never() -> bool:
    return False


_abandoned: Callable[[], bool] = _never
_down_since: float | None = None


def refusal(exc: BaseException) -> str | None:
    """The code (``"OOM"``, ``"MISCONF"``...) with which Redis refused a command, or None."""
    for cls, code in _CLASSES:
        if isinstance(exc, cls):
            return code
    if isinstance(exc, redis.ResponseError):
        match = _CODE.search(str(exc))
        return match.group(1) if match else None
    return None


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` is Redis away or refusing for a while (ride it out), not a bug or bad data."""
    return isinstance(exc, (redis.ConnectionError, redis.TimeoutError)) or refusal(exc) is not None


def describe(exc: BaseException) -> str:
    """One line saying what the outage is: "Redis is refusing writes (...)" or "Redis not answering (...)"."""
    code = refusal(exc)
    if code is not None:
        return f"Redis is refusing writes ({REFUSALS[code]})"
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        text = str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else type(exc).__name__
        return f"Redis not answering ({text})"
    return f"Redis error: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"


# -- stopping during an outage ------------------------------------------------------------------


def request_stop() -> None:
    """This process is stopping: from OUTAGE_STOP_GRACE seconds on, Redis commands are no longer retried."""
    global _stop_requested_at
    if _stop_requested_at is None:
        _stop_requested_at = time.monotonic()


def abandon_when(predicate: Callable[[], bool]) -> None:
    """Give up retrying at once whenever ``predicate()`` is true (a worker whose pool is gone)."""
    global _abandoned
    _abandoned = predicate


def giving_up() -> bool:
    """Whether retries should stop now: a stop older than OUTAGE_STOP_GRACE, or an abandoned process."""
    stopped = _stop_requested_at is not None and time.monotonic() - _stop_requested_at >= OUTAGE_STOP_GRACE
    return stopped or _abandoned()


def down_for() -> float | None:
    """Seconds since a command of this process last failed to reach Redis, if none succeeded since."""
    return None if _down_since is None else time.monotonic() - _down_since


def pause(seconds: float) -> bool:
    """Sleep up to ``seconds``, in short slices, ending early if retries are given up; True if so."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if giving_up():
            return True
        time.sleep(min(0.1, left))
    return giving_up()


class OutageRetry(Retry):
    """redis-py's Retry (connection errors and timeouts, with backoff), which gives up at once when
    the process is stopping (:func:`request_stop`) or abandoned (:func:`abandon_when`): RQ's stop
    handlers write to Redis, and a worker stuck retrying them would ignore its stop for minutes."""

    def call_with_retry(
        self,
        do: Callable[[], Any],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> Any:
        global _down_since
        self._backoff.reset()
        failures = 0
        while True:
            try:
                result = do()
                _down_since = None
                return result
            except self._supported_errors as error:
                if is_retryable and not is_retryable(error):
                    raise
                failures += 1
                _down_since = _down_since or time.monotonic()
                fail(error, failures) if with_failure_count else fail(error)
                if (self._retries >= 0 and failures > self._retries) or giving_up():
                    raise error
                if pause(self._backoff.compute(failures)):
                    raise error


# -- silent loss --------------------------------------------------------------------------------


def check_eviction_policy(connection: redis.Redis, where: str = "Redis") -> None:
    """Refuse a Redis that may evict keys: queued jobs, batches and results would vanish without a
    word. Any policy but ``noeviction`` is refused, even with no ``maxmemory`` set yet (it can be
    set at any time). Read from ``INFO memory``, which works where ``CONFIG`` is disabled."""
    try:
        policy = connection.info("memory").get("maxmemory_policy")
    except redis.ResponseError:  # INFO renamed too: nothing to go on
        return
    if policy and policy != "noeviction":
        raise RedisMisconfigured(
            f"{where} may evict keys (maxmemory-policy {policy}), so jobs could vanish without a word; "
            "run: redis-cli CONFIG SET maxmemory-policy noeviction (and set it in redis.conf)"
        )


def _new_mark() -> bytes:
    """A mark's value: a random id, and the time it was set (seconds since the epoch)."""
    return f"{uuid.uuid4().hex}:{time.time():.0f}".encode()


def new_mark() -> bytes:
    """A new mark's value, for a script that adopts the mark in its own call (``lua/enqueue.lua``)."""
    return _new_mark()


def probe_writes(connection: redis.Redis) -> None:
    """Raise Redis's refusal (OOM, MISCONF, READONLY...) if it refuses writes now; change nothing
    (it sets the data mark only where there is none, as any first use does)."""
    connection.set(MARK_KEY, _new_mark(), nx=True)


class DataMark:
    """A mark (``workqueue:mark``, a random id set at first use, never expiring) that tells a Redis
    that restarted empty (no persistence, or flushed) from one with empty queues: a process remembers
    the mark it saw; if Redis later holds another, or none, it lost its data meanwhile."""

    def __init__(self, connection: redis.Redis) -> None:
        """Adopt the mark of ``connection``'s Redis, setting it if it has none (``fresh``)."""
        self.id, self.fresh = self._adopt(connection)
        #: When this process saw the data lost (``time.time()``), if it has.
        self.lost_at: float | None = None

    @staticmethod
    def adopt_in(pipe: redis.client.Pipeline) -> None:
        """Queue on ``pipe`` (a transaction that writes anyway) what adopting the mark reads; its two
        replies make the mark (:meth:`adopted`), with no round trip of its own."""
        pipe.set(MARK_KEY, _new_mark(), nx=True)
        pipe.get(MARK_KEY)

    @classmethod
    def adopted(cls, created: Any, held: bytes | str | None) -> DataMark:
        """The mark from the replies of :meth:`adopt_in`."""
        mark = cls.__new__(cls)
        mark.id, mark.fresh, mark.lost_at = (None if held is None else as_bytes(held)), bool(created), None
        return mark

    @staticmethod
    def _adopt(connection: redis.Redis) -> tuple[bytes | None, bool]:
        mine = _new_mark()
        try:
            try:
                fresh = bool(connection.set(MARK_KEY, mine, nx=True))
            except redis.RedisError as exc:
                if refusal(exc) is None:
                    raise
                fresh = False  # refusing writes: read what is there
            if fresh:
                return mine, True
            held = connection.get(MARK_KEY)
            return (None if held is None else as_bytes(held)), False
        except redis.RedisError as exc:
            if not is_outage(exc):
                raise
            return None, False  # adopted at the first check that Redis answers

    @property
    def since(self) -> float | None:
        """When the mark this process holds was set: how far back this Redis's data goes."""
        try:
            return float(self.id.split(b":")[1]) if self.id else None
        except (IndexError, ValueError):
            return None

    def check(self, connection: redis.Redis, *, probe_writes: bool = True) -> None:
        """Raise RedisLostData if the mark changed since this process saw it; then adopt the new one.
        With ``probe_writes``, raise Redis's refusal (OOM, MISCONF...) if it refuses writes."""
        with connection.pipeline(transaction=False) as pipe:
            pipe.set(MARK_KEY, _new_mark(), nx=True)  # a new id: a mark gone is a mark changed
            pipe.get(MARK_KEY)
            created, current = pipe.execute(raise_on_error=False)
        if isinstance(current, Exception):
            raise current
        if self.id is not None and current != self.id:
            self.id, self.lost_at = current, time.time()
            raise RedisLostData("Redis lost its data (restarted without persistence?): what it held before is gone")
        self.id = current
        if isinstance(created, Exception) and probe_writes:
            raise created
