"""``python -m workqueue queue pause Q | resume Q | drain Q``: hold one queue, let it go, wait for it to empty."""

from __future__ import annotations

import click

from workqueue import pausing
from workqueue.cli.common import EXIT_OK, QueueName, redis_url_option
from workqueue.connection import connect


@click.group("queue", context_settings={"help_option_names": ["-h", "--help"]})
def queue() -> None:
    """Pause, resume or drain one queue, for every worker on every machine."""


@queue.command()
@click.argument("name", type=QueueName())
@redis_url_option
def pause(name: str, redis_url: str | None) -> int:
    """Workers take no new job from NAME (running jobs finish; enqueueing still works)."""
    connection, _ = connect(redis_url)
    pausing.pause(connection, name)
    click.echo(f"queue {name} paused: workers start none of its jobs until `queue resume {name}`")
    return EXIT_OK


@queue.command()
@click.argument("name", type=QueueName())
@redis_url_option
def resume(name: str, redis_url: str | None) -> int:
    """Workers take jobs from NAME again."""
    connection, _ = connect(redis_url)
    pausing.resume(connection, name)
    click.echo(f"queue {name} resumed")
    return EXIT_OK


@queue.command()
@click.argument("name", type=QueueName())
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Give up after this many seconds (exit 1).",
)
@redis_url_option
def drain(name: str, timeout: float | None, redis_url: str | None) -> int:
    """Wait until NAME holds no waiting job and none of its jobs runs, with a progress bar."""
    connection, _ = connect(redis_url)
    first = pausing.backlog(connection, name)
    note = " (paused: nothing will start until it is resumed)" if pausing.is_paused(connection, name) else ""
    click.echo(f"draining {name}: {first.waiting} waiting, {first.running} running{note}")
    total = max(first.left, 1)
    with click.progressbar(length=total, label=f"drain {name}", show_pos=True) as bar:
        done = [0]

        def on_progress(now: pausing.Backlog) -> None:
            nonlocal total
            if now.left > total - done[0]:  # more were enqueued meanwhile: the bar grows
                total = done[0] + now.left
                bar.length = total
            step = total - now.left - done[0]
            if step > 0:
                bar.update(step)
                done[0] += step

        pausing.drain(connection, name, timeout, on_progress)
    click.echo(f"queue {name} is drained: nothing waiting, nothing running")
    return EXIT_OK
