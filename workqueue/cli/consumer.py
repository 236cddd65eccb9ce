"""``consumer_main.py``: a pool of worker processes on one or more queues, with a live status line."""

from __future__ import annotations

import sys
import threading
import time

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
from workqueue.settings import DEFAULT_QUEUE, MAX_WORKERS, MIN_WORKERS, QUICK_TIMEOUT
from workqueue.supervision import Supervisor
from workqueue.worker.pool import ConsumerPool, PoolStatus


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
    return (
        f"{lost}{state}{len(status.workers)} workers: {status.busy} busy, {status.idle} idle{stopped} | "
        f"done {status.finished}, failed {status.failed}, queued {status.queued}"
        + (f" | paused: {', '.join(status.paused)}" if status.paused else "")
    )


def start_schedules(connection: redis.Redis) -> threading.Event:
    """Fire the periodic schedules from this process (``schedules.Firer``, a supervised helper
    thread with its own client that fails fast), until the returned event is set. Only the pool
    process fires them, never each worker; every consumer does, and each tick is claimed once."""
    from workqueue import schedules

    stop = threading.Event()
    supervisor = Supervisor()
    supervisor.add("schedules", schedules.Firer(without_retries(connection, socket_timeout=QUICK_TIMEOUT)).run)
    supervisor.start(stop)
    return stop


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
    type=click.IntRange(MIN_WORKERS, MAX_WORKERS),
    default=None,
    help=f"How many worker processes ({MIN_WORKERS} to {MAX_WORKERS}).",
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
@click.option("--burst", is_flag=True, help="Exit when the queues are empty; otherwise run until Ctrl-C/SIGTERM.")
@click.option("--verbose", is_flag=True, help="Log every job the workers run.")
@redis_url_option
def main(
    workers: int | None, queues: tuple[str, ...], order: str, burst: bool, verbose: bool, redis_url: str | None
) -> int:
    """Run worker processes. Run bare at a terminal, it asks how many and on which queues."""
    if workers is None and not queues and can_prompt():
        workers = click.prompt(
            f"How many workers ({MIN_WORKERS}-{MAX_WORKERS})", default=2, type=click.IntRange(MIN_WORKERS, MAX_WORKERS)
        )
        queues = tuple(click.prompt("Queue(s), separated by commas", default=DEFAULT_QUEUE, type=QueueList()))
    elif workers is None:
        fail(f"missing --workers N ({MIN_WORKERS} to {MAX_WORKERS}); with no terminal there is nothing to prompt on")
    queues = queues or (DEFAULT_QUEUE,)
    logs.setup(verbose)
    connection, target = connect(redis_url, ride_out_outages=True)
    live = sys.stdout.isatty()
    last: list[str] = []
    names: set[str] = set()

    def on_tick(status: PoolStatus) -> None:
        current = {w.name for w in status.workers}
        if current - names:
            if live and last:
                click.echo()
            click.echo("workers: " + ", ".join(sorted(current - names)))
            last.clear()
        names.update(current)
        echo_status(status_line(status), live=live, last=last)

    click.echo(f"starting {workers} workers on {', '.join(queues)} ({target.display}); Ctrl-C stops them")
    if burst:
        _sweep(connection)  # a dead worker's job counts as waiting: hand it back before deciding what is empty
    # Periodic schedules are fired by long-running consumers only: a --burst one ends when its
    # queues are empty, and a tick it fired would only start work it does not wait for.
    schedules_stop = None if burst else start_schedules(connection)
    while True:
        pool = ConsumerPool(queues, connection, workers, on_tick=on_tick, order=order)
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
