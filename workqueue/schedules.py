"""Periodic schedules: a catalogue task enqueued as a batch at every tick of a cron expression or an
interval, fired exactly once per tick however many consumers run.

A schedule lives in Redis, so every consumer on every machine can fire it: this module holds what a
schedule is (its timing, its definition, its state) and reads and changes them; the consumers fire
them with ``workqueue.schedule_firing``.

Missed ticks (no consumer ran) are not replayed: the latest tick that is due fires once, and the
ones before it are skipped. A paused schedule fires nothing, and on resume the ticks it missed
while paused are skipped too.

The schedule file (``schedules.toml``) is read and applied by ``workqueue.schedule_file``.

Redis keys:
- ``workqueue:schedules``: the set of schedule names;
- ``workqueue:schedule:<name>``: a hash: the definition (kind, spec, tz, task, params, queue,
  retries, timeout, version) and the state (paused, since, last_tick, last_run, last_batch, fired,
  manual_runs, pending, pending_at);
- ``workqueue:schedule:<name>:history``: the last HISTORY fired ticks, newest first, each
  ``"<tick> <batch id> <consumer>"``.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import redis

from workqueue import batches, producer
from workqueue.errors import BadInput
from workqueue.jobs import check_queue_name
from workqueue.replies import decoded_map, decoded_members

if TYPE_CHECKING:
    from croniter import croniter

log = logging.getLogger(__name__)
_T = TypeVar("_T")


def _cron() -> ModuleType:
    """croniter, imported on first use: importing it runs ``file`` on the Python binary (its
    ``platform.architecture()`` check), a process that every consumer, producer and gateway would
    otherwise start as it imports this module, schedules or not."""
    import croniter

    return croniter


INDEX = "workqueue:schedules"
PREFIX = "workqueue:schedule:"
DEFAULT_TZ = "UTC"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_EVERY = re.compile(r"\s*(\d+)\s*([smhd]?)\s*")
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_DEFINITION = ("kind", "spec", "tz", "task", "params", "queue", "retries", "timeout")


def key(name: str) -> str:
    return PREFIX + name


def history_key(name: str) -> str:
    return f"{PREFIX}{name}:history"


def check_name(name: str) -> str:
    """``name`` if it can name a schedule; raises BadInput saying what is allowed."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise BadInput(
            f"invalid schedule name {name!r}: use 1 to 64 letters, digits, '_', '-', '.' or ':', "
            "starting with a letter or digit",
            "name",
        )
    return name


def parse_every(text: str | int) -> int:
    """``"2s"``, ``"10m"``, ``"1h"``, ``"1d"`` (a bare number: seconds) as seconds; raises BadInput."""
    if isinstance(text, int) and not isinstance(text, bool):
        seconds = text
    else:
        match = _EVERY.fullmatch(str(text))
        if not match:
            raise BadInput(f"--every {text!r}: expected a number and a unit, e.g. 2s, 10m, 1h or 1d", "every")
        seconds = int(match.group(1)) * _UNITS[match.group(2) or "s"]
    if not 1 <= seconds <= 366 * 86400:
        raise BadInput(f"--every {text!r}: the interval must be between 1 s and 366 days", "every")
    return seconds


def format_every(seconds: int) -> str:
    for unit, size in _UNITS.items():
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"  # pragma: no cover (s divides everything)


def check_tz(tz: str) -> ZoneInfo:
    """The IANA time zone named ``tz``; raises BadInput for a name that is not one."""
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise BadInput(f"--tz {tz!r}: unknown time zone (use an IANA name such as Europe/Paris or UTC)", "tz") from None


@dataclass(frozen=True)
class When:
    """When a schedule's ticks fall: a cron expression in a time zone, or every N seconds.

    Cron has five fields (minute hour day month weekday) or six, where the FIRST is the seconds
    (``*/2 * * * * *``: every two seconds), as in Quartz, Spring and BullMQ. Intervals are counted
    from the Unix epoch, so ``every 10m`` ticks at :00, :10, :20 and the same on every machine."""

    kind: str  # "cron" or "every"
    spec: str  # the cron expression, or the interval in seconds
    tz: str = DEFAULT_TZ

    @classmethod
    def cron(cls, expr: str, tz: str | None = None) -> When:
        """A validated cron schedule; raises BadInput for an expression that does not parse or never fires."""
        zone = check_tz(tz or DEFAULT_TZ)
        expr = " ".join(str(expr).split())
        fields = expr.split(" ")
        if not (expr.startswith("@") and len(fields) == 1) and len(fields) not in (5, 6):
            raise BadInput(
                f"--cron {expr!r}: expected 5 fields (minute hour day month weekday) or 6 (seconds first)", "cron"
            )
        cron = _cron()
        try:
            cron.croniter(expr, datetime.now(zone), second_at_beginning=True).get_next(float)
        except (cron.CroniterError, ValueError, KeyError) as exc:
            raise BadInput(f"--cron {expr!r}: not a valid cron expression ({exc})", "cron") from None
        return cls("cron", expr, str(zone.key))

    @classmethod
    def every(cls, interval: str | int) -> When:
        return cls("every", str(parse_every(interval)))

    @property
    def seconds(self) -> int:
        return int(self.spec)

    def describe(self) -> str:
        if self.kind == "every":
            return f"every {format_every(self.seconds)}"
        return f"cron {self.spec} ({self.tz})"

    def _iter(self, now: float) -> croniter:
        return _cron().croniter(self.spec, datetime.fromtimestamp(now, ZoneInfo(self.tz)), second_at_beginning=True)

    def latest_tick(self, now: float) -> float | None:
        """The last tick at or before ``now`` (epoch seconds), None if there is none."""
        if self.kind == "every":
            return math.floor(now / self.seconds) * self.seconds
        try:
            return self._iter(now).get_prev(float)
        except _cron().CroniterError:
            return None

    def next_tick(self, now: float) -> float | None:
        """The first tick after ``now``."""
        if self.kind == "every":
            return (math.floor(now / self.seconds) + 1) * self.seconds
        try:
            return self._iter(now).get_next(float)
        except _cron().CroniterError:
            return None


@dataclass(frozen=True)
class Schedule:
    """A schedule's definition: its name, when it ticks, and the task call each tick enqueues."""

    name: str
    when: When
    task: str
    params: Mapping[str, Any]
    queue: str
    retries: int | None = None
    timeout: int | None = None

    @classmethod
    def build(
        cls,
        name: str,
        *,
        cron: str | None = None,
        every: str | int | None = None,
        tz: str | None = None,
        task: str,
        params: Mapping[str, Any] | None = None,
        queue: str,
        retries: int | None = None,
        timeout: int | None = None,
    ) -> Schedule:
        """Validate everything (name, timing, task and parameters through the producer's
        ``TaskCall.build``, queue); raises BadInput with one line saying what is wrong."""
        check_name(name)
        if (cron is None) == (every is None):
            raise BadInput("give exactly one of --cron EXPR and --every INTERVAL", "cron")
        if every is not None and tz is not None:
            raise BadInput("--tz goes with --cron only: an interval is the same in every time zone", "tz")
        when = When.cron(cron, tz) if cron is not None else When.every(every)  # type: ignore[arg-type]
        call = producer.TaskCall.build(task, params, retries=retries, timeout=timeout)
        return cls(check_name(name), when, call.task.name, call.params, check_queue_name(queue), retries, timeout)

    def call(self) -> producer.TaskCall:
        """The task call a tick enqueues, validated again against this process's catalogue."""
        return producer.TaskCall.build(self.task, self.params, retries=self.retries, timeout=self.timeout)

    def describe_task(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{self.task}({args})"

    def definition(self) -> dict[str, str]:
        """The hash fields that define it (as Redis holds them)."""
        return {
            "kind": self.when.kind, "spec": self.when.spec, "tz": self.when.tz, "task": self.task,
            "params": json.dumps(dict(self.params), sort_keys=True), "queue": self.queue,
            "retries": "" if self.retries is None else str(self.retries),
            "timeout": "" if self.timeout is None else str(self.timeout),
        }  # fmt: skip

    @classmethod
    def from_fields(cls, name: str, data: Mapping[str, str]) -> Schedule:
        """A definition read back from Redis (not validated again: that happens when it fires)."""
        retries, timeout = data.get("retries"), data.get("timeout")
        return cls(
            name, When(data["kind"], data["spec"], data.get("tz") or DEFAULT_TZ), data["task"],
            json.loads(data["params"]), data["queue"],
            int(retries) if retries else None, int(timeout) if timeout else None,
        )  # fmt: skip


@dataclass
class Stored:
    """A schedule as Redis holds it: its definition and its state."""

    schedule: Schedule
    version: str
    paused: bool = False
    #: Ticks at or before this (epoch seconds) never fire: when it was created, changed or resumed.
    since: float = 0.0
    last_tick: float | None = None
    last_run: float | None = None
    last_batch: str | None = None
    fired: int = 0
    manual_runs: int = 0
    #: A tick's batch claimed but not known to be enqueued yet, and since when.
    pending: str | None = None
    pending_at: float = 0.0

    @property
    def name(self) -> str:
        return self.schedule.name

    @classmethod
    def from_hash(cls, name: str, data: Mapping[str, str]) -> Stored:
        def number(field: str) -> float | None:
            return float(data[field]) if data.get(field) else None

        return cls(
            Schedule.from_fields(name, data), data.get("version", "0"), data.get("paused") == "1",
            number("since") or 0.0, number("last_tick"), number("last_run"), data.get("last_batch") or None,
            int(data.get("fired") or 0), int(data.get("manual_runs") or 0),
            data.get("pending") or None, number("pending_at") or 0.0,
        )  # fmt: skip

    def due_tick(self, now: float) -> float | None:
        """The tick to fire at ``now``, if one is due: the latest one (missed ones are not replayed)."""
        if self.paused:
            return None
        tick = self.schedule.when.latest_tick(now)
        if tick is None or tick <= max(self.since, self.last_tick or 0.0):
            return None
        return tick

    def next_run(self, now: float) -> float | None:
        """When it fires next: a tick that is due already (a catch-up), else the next one; None when paused."""
        if self.paused:
            return None
        return self.due_tick(now) or self.schedule.when.next_tick(now)


# -- reading and changing schedules ------------------------------------------------------------


def redis_now(conn: redis.Redis) -> float:
    """Redis's clock, which every consumer shares."""
    seconds, micros = conn.time()
    return seconds + micros / 1e6


def names(conn: redis.Redis) -> list[str]:
    return sorted(decoded_members(conn.smembers(INDEX)))


def load_all(conn: redis.Redis, *, skip_bad: bool = False) -> list[Stored]:
    """Every schedule, by name, in two round trips. ``skip_bad``: leave out (and log) a hash that
    cannot be read, instead of raising."""
    found = names(conn)
    with conn.pipeline(transaction=False) as pipe:
        for name in found:
            pipe.hgetall(key(name))
        replies = pipe.execute()
    result = []
    for name, reply in zip(found, replies, strict=True):
        if not reply:
            continue  # removed between the two reads
        try:
            result.append(Stored.from_hash(name, decoded_map(reply)))
        except (KeyError, ValueError, UnicodeDecodeError) as exc:
            if not skip_bad:
                raise
            log.warning("schedule %s cannot be read (%s: %s); it is skipped", name, type(exc).__name__, exc)
    return result


def get(conn: redis.Redis, name: str) -> Stored:
    """One schedule; raises BadInput naming those that exist if there is none by that name."""
    data = decoded_map(conn.hgetall(key(name))) if _NAME.fullmatch(str(name)) else {}
    if not data:
        existing = names(conn)
        have = f"the schedules are: {', '.join(existing)}" if existing else "there are no schedules"
        raise BadInput(f"no schedule named {name!r} ({have})", "name")
    return Stored.from_hash(name, data)


def transaction(conn: redis.Redis, change: Callable[[redis.client.Pipeline], _T], *watched: str) -> _T:
    """``change(pipe)`` with ``watched`` under WATCH (its reads run at once, its writes after
    ``pipe.multi()`` in one MULTI/EXEC), again from the start if a watched key changed meanwhile."""
    with conn.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(*watched)
                result = change(pipe)
                pipe.execute()
                return result
            except redis.WatchError:
                continue


def write(pipe: redis.client.Pipeline, schedule: Schedule, current: Stored | None, now: float) -> None:
    """Queue on ``pipe`` the writes that make ``schedule`` the definition (its state kept, ``since``
    moved to now when its timing changes, so a new timing never fires for a past tick)."""
    fields: dict[Any, Any] = dict(schedule.definition())
    if current is None:
        fields |= {"paused": "0", "since": repr(now), "fired": "0", "manual_runs": "0", "created_at": repr(now)}
    elif current.schedule.when != schedule.when:
        fields["since"] = repr(max(now, current.last_tick or 0.0))
    pipe.hset(key(schedule.name), mapping=fields)
    pipe.hincrby(key(schedule.name), "version", 1)
    pipe.sadd(INDEX, schedule.name)


def add(conn: redis.Redis, schedule: Schedule, *, replace: bool = False) -> str:
    """Create ``schedule`` (or, with ``replace``, redefine the one of that name); "created",
    "replaced" or "unchanged". Raises BadInput if it exists and ``replace`` is not given."""

    def change(pipe: redis.client.Pipeline) -> str:
        data = decoded_map(pipe.hgetall(key(schedule.name)))
        current = Stored.from_hash(schedule.name, data) if data else None
        if current is not None and not replace:
            raise BadInput(f"a schedule named {schedule.name!r} exists; give --replace to redefine it", "name")
        if current is not None and current.schedule == schedule:
            return "unchanged"
        now = redis_now(pipe)
        pipe.multi()
        write(pipe, schedule, current, now)
        return "created" if current is None else "replaced"

    return transaction(conn, change, key(schedule.name))


def remove(conn: redis.Redis, name: str) -> None:
    get(conn, name)
    with conn.pipeline(transaction=True) as pipe:
        pipe.delete(key(name), history_key(name))
        pipe.srem(INDEX, name)
        pipe.execute()


def set_paused(conn: redis.Redis, name: str, paused: bool) -> None:
    """Pause or resume; raises BadInput for an unknown name or one already in that state. A
    resumed schedule does not fire for the ticks it missed while paused."""

    def change(pipe: redis.client.Pipeline) -> None:
        stored = get(pipe, name)
        if stored.paused == paused:
            raise BadInput(f"schedule {name!r} is already {'paused' if paused else 'running (not paused)'}", "name")
        now = redis_now(pipe)
        pipe.multi()
        pipe.hset(key(name), mapping={"paused": "1" if paused else "0", **({} if paused else {"since": repr(now)})})

    transaction(conn, change, key(name))


def run_now(conn: redis.Redis, name: str) -> str:
    """Enqueue one batch of the schedule now (not a tick: the next tick fires as planned); its id."""
    stored = get(conn, name)
    submission = producer.enqueue(conn, [stored.schedule.call()], stored.schedule.queue)
    with conn.pipeline(transaction=True) as pipe:
        pipe.hset(key(name), mapping={"last_run": repr(redis_now(conn)), "last_batch": submission.batch_id})
        pipe.hincrby(key(name), "manual_runs", 1)
        pipe.execute()
    log.info("schedule %s: run now as batch %s", name, submission.batch_id)
    return submission.batch_id


def last_outcome(conn: redis.Redis, batch_id: str | None) -> str:
    """The last batch's outcome in a few words, from its summary."""
    if not batch_id:
        return "never run"
    try:
        s = batches.summary(conn, batch_id)
    except KeyError:
        return "expired or not enqueued"
    if not s.done:
        return f"running ({s.finished + s.failed} of {s.total} ended)"
    return "failed" if s.failed else "finished"


def as_dict(conn: redis.Redis, stored: Stored, now: float) -> dict[str, Any]:
    """A schedule as the gateway and the dashboard show it: its definition, state, next and last
    run (ISO 8601 in UTC) and its last batch's outcome."""
    s = stored.schedule
    return {
        "name": s.name, "kind": s.when.kind, "spec": s.when.spec, "tz": s.when.tz, "when": s.when.describe(),
        "task": s.task, "params": dict(s.params), "queue": s.queue, "retries": s.retries, "timeout": s.timeout,
        "paused": stored.paused, "next_run": _utc(stored.next_run(now)), "last_run": _utc(stored.last_run),
        "last_batch": stored.last_batch, "last_outcome": last_outcome(conn, stored.last_batch),
        "fired": stored.fired, "manual_runs": stored.manual_runs,
    }  # fmt: skip


def _utc(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")
