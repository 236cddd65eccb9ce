"""``python -m workqueue``: housekeeping verbs, such as starting and stopping the embedded Redis."""

from __future__ import annotations

import click

from workqueue import embedded
from workqueue.cli import services
from workqueue.cli.common import EXIT_FAILED, EXIT_OK
from workqueue.cli.demo import demo
from workqueue.cli.limit import limit
from workqueue.cli.queue import queue
from workqueue.cli.schedule import schedule
from workqueue.connection import connect
from workqueue.settings import Settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """workqueue housekeeping."""


main.add_command(demo)
main.add_command(schedule)
main.add_command(queue)
main.add_command(limit)


@main.group()
def redis() -> None:
    """The embedded Redis server (the default when REDIS_URL is not set)."""


@redis.command()
def start() -> int:
    """Start it unless a Redis already answers at the default URL."""
    _, target = connect()
    click.echo(f"Redis is up at {target.display}")
    return EXIT_OK


@redis.command()
def stop() -> int:
    """Stop the embedded server (its append-only log keeps every queued job)."""
    settings = Settings.from_env()
    if embedded.stop(settings):
        click.echo(f"stopped the embedded Redis on {settings.default_url}")
    else:
        click.echo("the embedded Redis was not running")
    return EXIT_OK


@redis.command()
def status() -> int:
    """Say whether the embedded server is running, and where its data lives."""
    settings = Settings.from_env()
    pid = embedded.running_pid(settings)
    if pid is None:
        click.echo(f"not running (data in {settings.redis_dir}); default URL {settings.default_url}")
        return EXIT_FAILED
    click.echo(f"running, pid {pid}, on {settings.default_url} (password in {settings.password_file}), "
               f"data in {settings.redis_dir}")  # fmt: skip
    return EXIT_OK


@main.command("start-service")
@click.argument("name")
@click.argument("command", nargs=-1, required=True)
@click.option("--wait-url", default=None, help="Return once this URL answers (bounded by --timeout).")
@click.option("--timeout", type=float, default=20.0, show_default=True)
def start_service(name: str, command: tuple[str, ...], wait_url: str | None, timeout: float) -> int:
    """Run COMMAND detached, its pid and log under .run/ (what `make run` starts)."""
    pid = services.start(name, list(command), wait_url=wait_url, timeout=timeout)
    click.echo(f"{name}: running (pid {pid}, log {services.log_path(name)})")
    return EXIT_OK


@main.command("stop-service")
@click.argument("name")
@click.option(
    "--timeout",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds to wait for a graceful stop before stopping at once.",
)
def stop_service(name: str, timeout: float) -> int:
    """Stop a service started by start-service: SIGTERM, then a second one after --timeout."""
    click.echo(f"{name}: {services.stop(name, timeout=timeout)}")
    return EXIT_OK
