"""``/metrics`` in the Prometheus text format (the official client), read from Redis at each scrape:
queue lengths (per priority level too), paused queues, registry sizes, workers busy and idle, finished and
failed counters, and run-time histograms per task (kept by the workers, see ``statistics``)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from rq import Queue, Worker

from workqueue import backlog, jobstats, limits, pausing, priorities, schedules
from workqueue.jobs import SERIALIZER

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_REGISTRIES = ("started", "finished", "failed", "deferred", "scheduled", "canceled")


class RedisCollector:
    """A Prometheus collector over one Redis: every figure read at scrape time, in a few round trips."""

    def __init__(self, connection: redis.Redis) -> None:
        self.connection = connection

    def collect(self) -> Iterator[Metric]:
        names = jobstats.queue_names(self.connection)
        length = GaugeMetricFamily("workqueue_queue_jobs", "Jobs waiting in the queue.", labels=["queue"])
        registry = GaugeMetricFamily(
            "workqueue_registry_jobs", "Jobs in each of RQ's registries.", labels=["queue", "registry"]
        )
        with self.connection.pipeline(transaction=False) as pipe:
            for name in names:
                q = Queue(name, connection=self.connection, serializer=SERIALIZER)
                for reg in _REGISTRIES:
                    pipe.zcard(getattr(q, f"{reg}_job_registry").key)
                pipe.hgetall(jobstats.totals_key(name))
            replies = iter(pipe.execute())
        waiting = priorities.counts(self.connection, names)  # every level's list: RQ's own holds normal
        jobs = CounterMetricFamily("workqueue_jobs", "Jobs ended, by outcome.", labels=["queue", "task", "outcome"])
        tasks: dict[str, set[str]] = {}
        for name in names:
            length.add_metric([name], sum(waiting[name].values()))
            for reg in _REGISTRIES:
                registry.add_metric([name, reg], next(replies))
            for field, value in next(replies).items():
                task, _, outcome = field.decode().rpartition(":")
                jobs.add_metric([name, task, outcome], int(value))
                tasks.setdefault(name, set()).add(task)
        yield length
        yield registry
        yield jobs
        yield self._backlog(names)
        yield self._workers()
        yield self._durations(tasks)
        yield from self._dispatch(names, waiting)
        yield from self._limits()

    def _dispatch(self, names: list[str], waiting: dict[str, dict[int, int]]) -> Iterator[Metric]:
        """Each queue paused or not, and its waiting jobs per priority level (``pausing``, ``priorities``)."""
        paused = GaugeMetricFamily("workqueue_queue_paused", "1 if the queue is paused.", labels=["queue"])
        by_level = GaugeMetricFamily(
            "workqueue_queue_jobs_by_priority",
            "Jobs waiting in the queue, per priority level.",
            labels=["queue", "level"],
        )
        held = pausing.paused_names(self.connection)
        for name in sorted(set(names) | held):
            paused.add_metric([name], 1 if name in held else 0)
        for name in names:
            for level, count in waiting[name].items():
                by_level.add_metric([name, str(level)], count)
        yield paused
        yield by_level

    def _limits(self) -> Iterator[Metric]:
        """Per-key limits (``workqueue.limits``): per key in use, jobs waiting for room and slots in use."""
        waiting = GaugeMetricFamily(
            "workqueue_limit_waiting_jobs", "Jobs held off the queue until their limit key has room.", labels=["key"]
        )
        slots = GaugeMetricFamily(
            "workqueue_limit_slots_in_use", "Running jobs of the limit key (live leases).", labels=["key"]
        )
        for state in limits.key_states(self.connection, time.time()):
            waiting.add_metric([state.key], state.waiting)
            slots.add_metric([state.key], state.running)
        yield waiting
        yield slots

    def _backlog(self, names: list[str]) -> Metric:
        """Each queue's jobs waiting, running or held back: the length of the key KEDA reads (``backlog``)."""
        gauge = GaugeMetricFamily(
            "workqueue_queue_backlog", "Jobs enqueued and not ended: waiting, running or held back.", labels=["queue"]
        )
        for name, count in backlog.count(self.connection, names).items():
            gauge.add_metric([name], count)
        return gauge

    def _workers(self) -> Metric:
        workers = GaugeMetricFamily("workqueue_workers", "Registered workers, busy or idle.", labels=["state"])
        states = [w.get_state() for w in Worker.all(connection=self.connection, serializer=SERIALIZER)]
        busy = sum(1 for state in states if state == "busy")
        workers.add_metric(["busy"], busy)
        workers.add_metric(["idle"], len(states) - busy)
        return workers

    def _durations(self, tasks: dict[str, set[str]]) -> Metric:
        histogram = HistogramMetricFamily("workqueue_job_duration_seconds", "Job run time.", labels=["queue", "task"])
        pairs = [(queue, task) for queue in sorted(tasks) for task in sorted(tasks[queue])]
        with self.connection.pipeline(transaction=False) as pipe:
            for queue, task in pairs:
                pipe.hgetall(jobstats.histogram_key(queue, task))
            replies = pipe.execute()
        for (queue, task), data in zip(pairs, replies, strict=True):
            data = {k.decode(): v.decode() for k, v in data.items()}
            if not data:
                continue
            cumulative, buckets = 0, []
            for bound in jobstats.BUCKETS:
                cumulative += int(data.get(f"le:{bound}", 0))
                buckets.append((str(bound), cumulative))
            buckets.append(("+Inf", int(data.get("count", 0))))
            histogram.add_metric([queue, task], buckets, float(data.get("sum", 0.0)))
        return histogram


class HelperCollector:
    """Whether each of a server's helper threads runs, and how often it was restarted: a thread
    that keeps dying shows here, not only in the log (see ``workqueue.supervision``)."""

    def __init__(self, threads: Sequence[Mapping[str, Any]]) -> None:
        self.threads = threads

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("workqueue_helper_thread_up", "1 if the helper thread runs.", labels=["name"])
        restarts = CounterMetricFamily(
            "workqueue_helper_thread_restarts", "Restarts of a helper thread that died.", labels=["name"]
        )
        for thread in self.threads:
            up.add_metric([thread["name"]], 1 if thread["up"] else 0)
            restarts.add_metric([thread["name"]], thread["restarts"])
        yield up
        yield restarts


class ScheduleCollector:
    """Per periodic schedule: paused or not, when it last ran and runs next, how many ticks it fired
    and how often it was run by hand (see ``workqueue.schedules``)."""

    def __init__(self, connection: redis.Redis) -> None:
        self.connection = connection

    def collect(self) -> Iterator[Metric]:
        label = ["schedule"]
        paused = GaugeMetricFamily("workqueue_schedule_paused", "1 if the schedule is paused.", labels=label)
        last = GaugeMetricFamily(
            "workqueue_schedule_last_run_timestamp_seconds", "When the schedule last enqueued a batch.", labels=label
        )
        upcoming = GaugeMetricFamily(
            "workqueue_schedule_next_run_timestamp_seconds",
            "When the schedule fires next (not if paused).",
            labels=label,
        )
        fired = CounterMetricFamily("workqueue_schedule_fired", "Ticks fired, each once.", labels=label)
        manual = CounterMetricFamily("workqueue_schedule_run_now", "Batches enqueued by run-now.", labels=label)
        now = schedules.redis_now(self.connection)
        for stored in schedules.load_all(self.connection, skip_bad=True):
            paused.add_metric([stored.name], 1 if stored.paused else 0)
            if stored.last_run is not None:
                last.add_metric([stored.name], stored.last_run)
            next_run = stored.next_run(now)
            if next_run is not None:
                upcoming.add_metric([stored.name], next_run)
            fired.add_metric([stored.name], stored.fired)
            manual.add_metric([stored.name], stored.manual_runs)
        yield from (paused, last, upcoming, fired, manual)


def render(connection: redis.Redis, threads: Sequence[Mapping[str, Any]] = ()) -> bytes:
    """The exposition text for ``connection``'s Redis, and for the server's helper ``threads``
    (``Supervisor.status()``)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisCollector(connection))
    registry.register(HelperCollector(threads))
    registry.register(ScheduleCollector(connection))
    return generate_latest(registry)
