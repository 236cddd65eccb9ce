"""``consumer_main.py``: a pool of worker processes on one or more queues, with a live status line."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import click
import redis

from workqueue import jobstats, logs, outage, recovery
from workqueue.cli.common import (
    EXIT_OK,
    QueueList,
    QueueName,
    can_prompt,
    echo_status,
    fail,
    redis_url_option,
)
from workqueue.connection import connect, without_retries
from workqueue.errors import BadInput
from workqueue.settings import (
    DEFAULT_QUEUE,
    MAX_WORKERS,
    MIN_WORKERS,
    QUICK_TIMEOUT,
    SCALE_IN_IDLE,
    SCALE_IN_IDLE_ENV,
    SCALE_UP_BACKLOG,
    SCALE_UP_BACKLOG_ENV,
)
from workqueue.supervision import Supervisor
from workqueue.worker.autoscale import Scaling, parse_range
from workqueue.worker.catalogue_worker import MAX_CONCURRENCY
from workqueue.worker.claiming import claim_ahead_settings, idle_look_gap_setting
from workqueue.worker.held_ends import end_hold_setting
from workqueue.worker.pool import ConsumerPool, PoolStatus
from workqueue.worker.process import stops_held


def status_line(status: PoolStatus) -> str:
    lost = ""
    if status.lost_data_at is not None:
        lost = (
            f"Redis lost its data at {time.strftime('%H:%M:%S', time.localtime(status.lost_data_at))} "
            "(restarted without persistence?) | "
        )
    if status.redis_down_for is not None:
        what = status.outage or "Redis not answering"
        return (
            f"{lost}{what} for {status.redis_down_for:.0f} s; {len(status.workers)} workers waiting "
            "for it (they carry on, with backoff, when it accepts work again)"
        )
    state = "stopping, " if status.stopping else ""
    stopped = f" ({len(status.stopped)} stopped by kill_workers)" if status.stopped else ""
    bounds = f" ({status.bounds})" if status.bounds else ""
    scaled = f" | {status.scaled}" if status.scaled else ""
    slots = f" ({status.slots[0]}/{status.slots[1]} jobs at once)" if status.slots else ""
    return (
        f"{lost}{state}{len(status.workers)} workers{bounds}: {status.busy} busy{slots}, {status.idle} idle{stopped} | "
        f"done {status.finished}, failed {status.failed}, queued {status.queued}{scaled}"
        + (f" | paused: {', '.join(status.paused)}" if status.paused else "")
    )


def start_schedules(connection: redis.Redis) -> threading.Event:
    """Fire the periodic schedules from this process (``schedule_firing.Firer``, a supervised helper
    thread with its own client that fails fast), until the returned event is set. Only the pool
    process fires them, never each worker; every consumer does, and each tick is claimed once."""
    from workqueue import schedule_firing

    stop = threading.Event()
    supervisor = Supervisor()
    supervisor.add("schedules", schedule_firing.Firer(without_retries(connection, socket_timeout=QUICK_TIMEOUT)).run)
    with stops_held():  # its threads (and those it restarts) leave Ctrl-C to the main one (ConsumerPool.start_worker)
        supervisor.start(stop)
    return stop


class WorkerCount(click.ParamType):
    """``--workers``: a number (1 to 10), or a range MIN-MAX the pool scales within (``worker.autoscale``)."""

    name = "N|MIN-MAX"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        try:
            bounds = parse_range(str(value))
        except BadInput as exc:
            self.fail(str(exc), param, ctx)
        if bounds is not None:
            return bounds
        number = click.IntRange(MIN_WORKERS, MAX_WORKERS).convert(value, param, ctx)
        return number, number


def _sweep(connection: redis.Redis) -> bool:
    """Hand back the jobs of dead workers (``recovery.sweep``); whether any went back to a queue."""
    try:
        _ghosts, handed = recovery.sweep(connection)
    except redis.RedisError as exc:
        click.echo(f"could not look for dead workers' jobs: {exc}", err=True)
        return False
    for outcome in handed:
        click.echo(outcome.describe())
    return any(outcome.outcome == recovery.REQUEUED for outcome in handed)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--workers",
    type=WorkerCount(),
    default=None,
    help=f"How many worker processes ({MIN_WORKERS} to {MAX_WORKERS}), or a range MIN-MAX (e.g. 2-10): the pool "
    f"grows when more than {SCALE_UP_BACKLOG:g} jobs wait per worker (${SCALE_UP_BACKLOG_ENV}) and stops a worker "
    f"idle {SCALE_IN_IDLE:g} s with nothing waiting (${SCALE_IN_IDLE_ENV}).",
)
@click.option(
    "--queue",
    "queues",
    type=QueueName(),
    multiple=True,
    help=f"Queue to work on; repeat for several (default {DEFAULT_QUEUE}).",
)
@click.option(
    "--order",
    type=click.Choice(["priority", "round-robin", "random"]),
    default="priority",
    show_default=True,
    help="With several queues: drain them in the order given, in turn, or at random.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, MAX_CONCURRENCY),
    default=1,
    show_default=True,
    help=f"Jobs each worker runs at once (1 to {MAX_CONCURRENCY}), in threads of its work horse: for I/O-bound "
    "tasks (scrape, crawl, sleep). Each job keeps its timeout, stop, progress and hand-back.",
)
@click.option("--burst", is_flag=True, help="Exit when the queues are empty; otherwise run until Ctrl-C/SIGTERM.")
@click.option("--verbose", is_flag=True, help="Log every job the workers run.")
@redis_url_option
def main(
    workers: tuple[int, int] | None,
    queues: tuple[str, ...],
    order: str,
    concurrency: int,
    burst: bool,
    verbose: bool,
    redis_url: str | None,
) -> int:
    """Run worker processes. Run bare at a terminal, it asks how many and on which queues."""
    if workers is None and not queues and can_prompt():
        workers = click.prompt(f"How many workers ({MIN_WORKERS}-{MAX_WORKERS})", default="2", type=WorkerCount())
        queues = tuple(click.prompt("Queue(s), separated by commas", default=DEFAULT_QUEUE, type=QueueList()))
    elif workers is None:
        fail(f"missing --workers N ({MIN_WORKERS} to {MAX_WORKERS}); with no terminal there is nothing to prompt on")
    assert workers is not None
    queues = queues or (DEFAULT_QUEUE,)
    scaling = Scaling.from_env(*workers)
    try:
        claim_ahead_settings()  # read again by each worker: a wrong value stops here, before any starts
        end_hold_setting()
        idle_look_gap_setting()
    except ValueError as exc:
        fail(str(exc))
    logs.setup(verbose)
    connection, target = connect(redis_url, ride_out_outages=True)
    live = sys.stdout.isatty()
    last: list[str] = []
    names: set[str] = set()
    said: list[str] = []

    def on_tick(status: PoolStatus) -> None:
        if status.scaled and status.scaled not in said[-1:]:  # each scaling on a line of its own, as it happens
            if live and last:
                click.echo()
            click.echo(status.scaled)
            said.append(status.scaled)
            last.clear()
        current = {w.name for w in status.workers}
        if current - names:
            if live and last:
                click.echo()
            click.echo("workers: " + ", ".join(sorted(current - names)))
            last.clear()
        names.update(current)
        echo_status(status_line(status), live=live, last=last)

    how_many = (
        f"{scaling.minimum} workers" if scaling.fixed else f"{scaling.minimum} workers (scaling {scaling.describe()})"
    )
    if concurrency > 1:
        how_many += f", {concurrency} jobs at once each"
    click.echo(f"starting {how_many} on {', '.join(queues)} ({target.display}); Ctrl-C stops them")
    if burst:
        _sweep(connection)  # a dead worker's job counts as waiting: hand it back before deciding what is empty
    # Periodic schedules are fired by long-running consumers only: a --burst one ends when its
    # queues are empty, and a tick it fired would only start work it does not wait for.
    schedules_stop = None if burst else start_schedules(connection)
    while True:
        pool = ConsumerPool(
            queues, connection, scaling.minimum, on_tick=on_tick, order=order, scaling=scaling, concurrency=concurrency
        )
        pool.start(burst=burst, logging_level="INFO" if verbose else "WARNING")
        # A burst pool sweeps again before it exits: if that hands jobs back, it works on.
        if not burst or pool.signalled or pool.stopped or not _sweep(connection):
            break
    if schedules_stop is not None:
        schedules_stop.set()  # (a daemon thread: an error that ends the consumer ends it too)
    if live:
        click.echo()
    try:
        final = pool.snapshot()
        click.echo(f"stopped: done {final.finished}, failed {final.failed}, queued {final.queued}")
        for line in jobstats.format_report(jobstats.collect(connection, queues)):
            click.echo(line)
    except redis.RedisError as exc:
        click.echo(f"stopped ({outage.describe(exc)}, so the totals are unknown)")
    return EXIT_OK
