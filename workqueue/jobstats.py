"""Statistics kept by the workers in Redis, with bounded retention, read by the producer's
``--stats``, the consumer at exit and the dashboard: the same numbers from the same counters.
A worker's horse counts its successes in memory and writes them about once a second (``tallies.Tally``).

- ``workqueue:stats:<queue>:<minute>``: a hash of ``<task>:enqueued|finished|failed`` counts per
  minute, expiring after STATS_RETENTION;
- ``workqueue:stats:<queue>:<task>:run`` and ``...:wait``: the last STATS_SAMPLES run times and waits
  (enqueue to start), in seconds, for percentiles;
- ``workqueue:stats:backlog:<minute>``: each queue's length, sampled by every consumer and dashboard
  each sweep (the last sample of the minute wins), expiring after STATS_RETENTION.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypedDict

import redis
from rq import Queue
from rq.job import Job

from workqueue import limits, lua, pausing, priorities, timing
from workqueue.jobs import SERIALIZER
from workqueue.replies import decoded
from workqueue.settings import STATS_RETENTION, STATS_SAMPLES

#: Upper bounds (seconds) of the run-time histogram buckets, for ``/metrics``.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)

log = logging.getLogger(__name__)

PREFIX = "workqueue:stats"


def minute(now: float | None = None) -> int:
    return int((now if now is not None else time.time()) // 60)


def bucket_key(queue: str, at_minute: int) -> str:
    return f"{PREFIX}:{queue}:{at_minute}"


def samples_key(queue: str, task: str, kind: str) -> str:
    return f"{PREFIX}:{queue}:{task}:{kind}"


def totals_key(queue: str) -> str:
    """Counts since the start (never expiring), for Prometheus counters: ``<task>:<outcome>``."""
    return f"{PREFIX}:totals:{queue}"


def histogram_key(queue: str, task: str) -> str:
    """Run times per bucket (``le`` bound, not cumulative), ``count`` and ``sum``, never expiring."""
    return f"{PREFIX}:histogram:{queue}:{task}"


def backlog_key(at_minute: int) -> str:
    return f"{PREFIX}:backlog:{at_minute}"


#: Where queue keys that are not UTF-8 are moved out of RQ's set of queues (see rq_queue_names).
FOREIGN_QUEUES_KEY = "workqueue:foreign-queues"


def rq_queue_names(connection: redis.Redis) -> list[str]:
    """The queues in RQ's set of queues, sorted. A key there that is not UTF-8 (only a foreign
    client writes one; RQ's own ``Queue.all`` raises on it, and with it every page and sweep that
    lists queues) is moved to FOREIGN_QUEUES_KEY, with a warning, and left otherwise untouched."""
    names = []
    prefix = Queue.redis_queue_namespace_prefix
    for raw in connection.smembers(Queue.redis_queues_keys):
        try:
            key = decoded(raw)
        except UnicodeDecodeError:
            # redis-py annotates the member as str; here it is the bytes that are not UTF-8
            if connection.smove(Queue.redis_queues_keys, FOREIGN_QUEUES_KEY, raw):  # type: ignore[arg-type]
                log.warning(
                    "queue key %r is not UTF-8 (a foreign client's); moved out of RQ's queue set into %s",
                    raw,
                    FOREIGN_QUEUES_KEY,
                )
            continue
        if key.startswith(prefix):
            names.append(key[len(prefix) :])
    return sorted(names)


def queue_names(connection: redis.Redis) -> list[str]:
    """Every queue RQ knows of or that has statistics, sorted."""
    ours = set()
    for raw in connection.smembers(f"{PREFIX}:queues"):
        try:
            ours.add(decoded(raw))
        except UnicodeDecodeError:
            continue  # only a foreign client writes one; statistics are kept for our queues alone
    return sorted(set(rq_queue_names(connection)) | ours)


def sample_backlog(connection: redis.Redis, now: float | None = None) -> None:
    """Note every queue's length in this minute's backlog sample, for the dashboard's chart
    (``now``: the clock, epoch seconds, default the time now)."""
    names = queue_names(connection)
    if not names:
        return
    with connection.pipeline(transaction=False) as pipe:
        for name in names:
            for level in priorities.levels():
                pipe.llen(priorities.key(name, level))
        replies = pipe.execute()
    per = len(priorities.levels())
    lengths = [sum(replies[i * per : (i + 1) * per]) for i in range(len(names))]
    key = backlog_key(minute(now))
    with connection.pipeline(transaction=False) as pipe:
        pipe.hset(key, mapping=dict(zip(names, lengths, strict=True)))
        pipe.expire(key, STATS_RETENTION)
        pipe.execute()


def count_enqueued(pipe: redis.client.Pipeline, queue: str, counts: dict[str, int]) -> None:
    """Add to the enqueued counters, inside the enqueueing transaction."""
    key = bucket_key(queue, minute())
    for task, n in counts.items():
        pipe.hincrby(key, f"{task}:enqueued", n)
    pipe.sadd(f"{PREFIX}:queues", queue)
    pipe.expire(key, STATS_RETENTION)


# One request instead of a dozen: a job's end is recorded in the same transaction as the job's own
# (``execution.finish``), where every command counts. KEYS: the minute's bucket, the totals, the
# histogram, the run and the wait samples. ARGV: task:outcome, STATS_RETENTION, STATS_SAMPLES, the histogram
# bucket ('' without a run time), the run and the wait ('' when unknown).
RECORD_END_SCRIPT = lua.script("stats_record_end")


def record_end(
    pipe: redis.client.Pipeline,
    queue: str,
    task: str,
    outcome: str,
    run: float | None,
    wait: float | None,
    now: float | None = None,
) -> None:
    """Count a job's end (``finished`` or ``failed``) and keep its run and wait times (``now``:
    the clock, epoch seconds, default the time now)."""
    keys = (
        bucket_key(queue, minute(now)),
        totals_key(queue),
        histogram_key(queue, task),
        samples_key(queue, task, "run"),
        samples_key(queue, task, "wait"),
    )
    bound = "" if run is None else next((str(b) for b in BUCKETS if run <= b), "+Inf")
    pipe.eval(
        RECORD_END_SCRIPT,
        len(keys),
        *keys,
        f"{task}:{outcome}",
        STATS_RETENTION,
        STATS_SAMPLES,
        bound,
        "" if run is None else round(run, 6),
        "" if wait is None else round(wait, 4),
    )


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


@dataclass
class TaskStats:
    queue: str
    task: str
    enqueued: int = 0
    finished: int = 0
    failed: int = 0
    running: int = 0
    #: Jobs ended in this minute and the one before, and the seconds those cover.
    recent_ended: int = 0
    recent_seconds: float = 60.0
    run: list[float] = field(default_factory=list)
    wait: list[float] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        """Jobs ended per second over the last minute or so."""
        return self.recent_ended / self.recent_seconds

    def as_dict(self) -> dict[str, Any]:
        """The figures as JSON-able data, percentiles in seconds (None without samples)."""
        return {
            "queue": self.queue,
            "task": self.task,
            "enqueued": self.enqueued,
            "finished": self.finished,
            "failed": self.failed,
            "running": self.running,
            "throughput": round(self.throughput, 3),
            "run_p50": percentile(self.run, 50),
            "run_p95": percentile(self.run, 95),
            "wait_p50": percentile(self.wait, 50),
            "wait_p95": percentile(self.wait, 95),
        }


@dataclass
class QueueStats:
    queue: str
    queued: int
    running: int
    tasks: dict[str, TaskStats]
    # -- when work runs (issue 15): jobs waiting for a time (RQ's scheduled registry) or for others --
    scheduled: int = 0
    #: When the first scheduled job is due (epoch seconds), if any.
    next_scheduled: float | None = None
    deferred: int = 0
    #: Waiting jobs per priority level (levels holding none left out), and whether the queue is paused.
    by_level: dict[int, int] = field(default_factory=dict)
    paused: bool = False
    #: Jobs waiting off the queue for room under a per-key limit (``workqueue.limits``).
    held: int = 0


def collect(
    connection: redis.Redis,
    queues: Iterable[str] | None = None,
    window: int = STATS_RETENTION,
    now: float | None = None,
) -> list[QueueStats]:
    """Per queue and per task, over the retention window (the last minute for throughput), as of
    ``now`` (the clock, epoch seconds, default the time now)."""
    names = sorted(queues) if queues else sorted(decoded(q) for q in connection.smembers(f"{PREFIX}:queues"))
    clock = time.time() if now is None else now
    current = minute(clock)
    minutes = list(range(current - window // 60, current + 1))
    report = []
    for name in names:
        q = Queue(name, connection=connection, serializer=SERIALIZER)
        with connection.pipeline(transaction=False) as pipe:
            for m in minutes:
                pipe.hgetall(bucket_key(name, m))
            for level in priorities.levels():
                pipe.llen(priorities.key(name, level))
            pipe.sismember(pausing.PAUSED_KEY, name)
            _waiting(pipe, q)
            replies = pipe.execute()
        levels = len(priorities.levels())
        buckets, replies = replies[: len(minutes)], replies[len(minutes) :]
        lengths, paused, waited = replies[:levels], bool(replies[levels]), _waited(replies[levels + 1 :])
        by_level = {level: n for level, n in zip(priorities.levels(), lengths, strict=True) if n}
        queued = sum(lengths)
        tasks: dict[str, TaskStats] = {}
        for m, bucket in zip(minutes, buckets, strict=True):
            for field_name, value in bucket.items():
                task, _, kind = field_name.decode().rpartition(":")
                stats = tasks.setdefault(task, TaskStats(name, task))
                setattr(stats, kind, getattr(stats, kind) + int(value))
                if kind in ("finished", "failed") and m >= current - 1:
                    stats.recent_ended += int(value)
        for stats in tasks.values():
            stats.recent_seconds = 60.0 + clock % 60
        started = q.started_job_registry.get_job_ids(cleanup=False)
        for job in Job.fetch_many(started, connection=connection, serializer=SERIALIZER):
            if job is not None:
                task = (job.meta or {}).get("task", job.func_name or "?")
                tasks.setdefault(task, TaskStats(name, task)).running += 1
        with connection.pipeline(transaction=False) as pipe:
            for task in tasks:
                pipe.lrange(samples_key(name, task, "run"), 0, -1)
                pipe.lrange(samples_key(name, task, "wait"), 0, -1)
            samples = pipe.execute()
        for i, stats in enumerate(tasks.values()):
            stats.run = [float(v) for v in samples[2 * i]]
            stats.wait = [float(v) for v in samples[2 * i + 1]]
        held = limits.held_total(connection, q.key)
        report.append(
            QueueStats(
                name, queued, len(started), dict(sorted(tasks.items())), *waited,
                by_level=by_level, paused=paused, held=held,
            )
        )  # fmt: skip
    return report


def _waiting(pipe: redis.client.Pipeline, q: Queue) -> None:
    """Queue the three reads of what waits on ``q``: scheduled jobs, the first one due, deferred jobs."""
    pipe.zcard(q.scheduled_job_registry.key)
    pipe.zrange(q.scheduled_job_registry.key, 0, 0, withscores=True)
    pipe.zcard(q.deferred_job_registry.key)


def _waited(replies: list[Any]) -> tuple[int, float | None, int]:
    scheduled, first, deferred = replies
    return int(scheduled), (float(first[0][1]) if first else None), int(deferred)


class _Series(TypedDict):
    finished: list[int]
    failed: list[int]
    backlog: list[int | None]


def history(connection: redis.Redis, minutes: int = 60, now: float | None = None) -> dict[str, Any]:
    """The last ``minutes`` minutes, oldest first: jobs finished and failed per minute (all
    queues, and per queue) and each queue's sampled backlog (None where no sample was taken);
    ``now``: the clock, epoch seconds, default the time now."""
    names = queue_names(connection)
    current = minute(now)
    span = list(range(current - minutes + 1, current + 1))
    with connection.pipeline(transaction=False) as pipe:
        for m in span:
            pipe.hgetall(backlog_key(m))
            for name in names:
                pipe.hgetall(bucket_key(name, m))
        replies = iter(pipe.execute())
    by_queue: dict[str, _Series] = {name: {"finished": [], "failed": [], "backlog": []} for name in names}
    for _ in span:
        backlog = {decoded(k): int(v) for k, v in next(replies).items()}
        for name in names:
            ended = {"finished": 0, "failed": 0}
            for field_name, value in next(replies).items():
                kind = decoded(field_name).rpartition(":")[2]
                if kind in ended:
                    ended[kind] += int(value)
            series = by_queue[name]
            series["finished"].append(ended["finished"])
            series["failed"].append(ended["failed"])
            series["backlog"].append(backlog.get(name))
    return {
        "minutes": [m * 60 for m in span],
        "finished": [sum(s["finished"][i] for s in by_queue.values()) for i in range(len(span))],
        "failed": [sum(s["failed"][i] for s in by_queue.values()) for i in range(len(span))],
        "queues": by_queue,
    }


def format_report(report: list[QueueStats]) -> list[str]:
    """The report as lines of a table."""

    def ms(value: float | None) -> str:
        return "-" if value is None else (f"{value * 1000:.0f}ms" if value < 1 else f"{value:.2f}s")

    lines = []
    for q in report:
        held = f", {q.held} held by limits" if q.held else ""
        lines.append(
            f"queue {q.queue}: {q.queued} queued, {q.running} running{held}{_describe_waiting(q)}"
            + (", paused" if q.paused else "")
        )
        if set(q.by_level) - {priorities.NORMAL}:
            waiting = ", ".join(f"{priorities.name(level)} {n}" for level, n in q.by_level.items())
            lines.append(f"  waiting by priority: {waiting}")
        if not q.tasks:
            continue
        lines.append(
            f"  {'task':<12}{'enqueued':>9}{'finished':>9}{'failed':>8}{'running':>8}{'jobs/s':>8}"
            f"{'wait p50':>10}{'p95':>8}{'run p50':>9}{'p95':>8}"
        )
        for t in q.tasks.values():
            lines.append(
                f"  {t.task:<12}{t.enqueued:>9}{t.finished:>9}{t.failed:>8}{t.running:>8}{t.throughput:>8.2f}"
                f"{ms(percentile(t.wait, 50)):>10}{ms(percentile(t.wait, 95)):>8}"
                f"{ms(percentile(t.run, 50)):>9}{ms(percentile(t.run, 95)):>8}"
            )
    return lines


def _describe_waiting(q: QueueStats) -> str:
    """``, 2 scheduled (next at 2026-12-01 03:00:00+01:00, in 1h2m), 1 deferred``: only what there is."""
    text = ""
    if q.scheduled:
        text += f", {q.scheduled} scheduled"
        if q.next_scheduled is not None:
            due = datetime.fromtimestamp(q.next_scheduled).astimezone()
            ahead = max(0, round(q.next_scheduled - time.time()))
            text += f" (next at {due.isoformat(sep=' ', timespec='seconds')}, in {timing.format_span(ahead)})"
    if q.deferred:
        text += f", {q.deferred} deferred"
    return text
