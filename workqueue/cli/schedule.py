"""``python -m workqueue schedule ...``: periodic schedules (``workqueue.schedules``), which every
running consumer fires, once per tick."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import click

from workqueue import calls as task_calls
from workqueue import schedule_file, schedules
from workqueue.cli.common import EXIT_OK, QueueName, redis_url_option
from workqueue.connection import connect
from workqueue.settings import MAX_RETRIES, MAX_TIMEOUT


@click.group("schedule", context_settings={"help_option_names": ["-h", "--help"]})
def schedule() -> None:
    """Periodic schedules: a task enqueued as a batch at every tick of a cron expression or an
    interval. Every running consumer (not --burst) fires them; each tick fires exactly once."""


@schedule.command("add")
@click.argument("name")
@click.option(
    "--cron",
    metavar="EXPR",
    default=None,
    help='Cron expression: 5 fields ("*/5 * * * *"), or 6 with the seconds FIRST ("*/2 * * * * *").',
)
@click.option("--tz", metavar="TZ", default=None, help="Time zone of --cron (IANA name; default UTC).")
@click.option("--every", metavar="INTERVAL", default=None, help="An interval instead: 2s, 10m, 1h, 1d.")
@click.option("--task", "task_name", required=True, help="Catalogue task (see producer_main.py --list-tasks).")
@click.option("--param", "pairs", multiple=True, metavar="KEY=VALUE", help="A task parameter; repeatable.")
@click.option("--queue", type=QueueName(), required=True, help="Queue each tick's batch goes to.")
@click.option("--retries", type=click.IntRange(0, MAX_RETRIES), default=None, help="Override the task's retries.")
@click.option("--timeout", type=click.IntRange(1, MAX_TIMEOUT), default=None, help="Override the task's timeout (s).")
@click.option("--replace", is_flag=True, help="Redefine the schedule of that name if it exists (its state kept).")
@redis_url_option
def add(
    name: str,
    cron: str | None,
    tz: str | None,
    every: str | None,
    task_name: str,
    pairs: tuple[str, ...],
    queue: str,
    retries: int | None,
    timeout: int | None,
    replace: bool,
    redis_url: str | None,
) -> int:
    """Add schedule NAME (validated whole before anything is written)."""
    definition = schedules.Schedule.build(
        name, cron=cron, every=every, tz=tz, task=task_name, params=task_calls.parse_param_pairs(pairs),
        queue=queue, retries=retries, timeout=timeout,
    )  # fmt: skip
    connection, _ = connect(redis_url)
    outcome = schedules.add(connection, definition, replace=replace)
    click.echo(f"schedule {name}: {outcome}, {definition.when.describe()}, {definition.describe_task()} on {queue}")
    return EXIT_OK


@schedule.command("list")
@redis_url_option
def list_(redis_url: str | None) -> int:
    """Each schedule: timing, task, queue, state, next and last run, last batch and its outcome."""
    connection, _ = connect(redis_url)
    found = schedules.load_all(connection, skip_bad=True)
    if not found:
        click.echo(
            "no schedules (add one with: python -m workqueue schedule add NAME --every 10m --task ... --queue Q)"
        )
        return EXIT_OK
    now = schedules.redis_now(connection)
    for s in found:
        state = "paused" if s.paused else "active"
        click.echo(
            f"{s.name}  {s.schedule.when.describe()}  {s.schedule.describe_task()} -> {s.schedule.queue}  {state}"
        )
        next_run = s.next_run(now)
        due = " (due: the next consumer to look fires it, once)" if next_run is not None and next_run <= now else ""
        click.echo(f"    next run: {_when(next_run, s.schedule.when.tz) if not s.paused else '- (paused)'}{due}")
        last = _when(s.last_run, s.schedule.when.tz)
        batch = f", batch {s.last_batch}: {schedules.last_outcome(connection, s.last_batch)}" if s.last_batch else ""
        click.echo(f"    last run: {last}{batch}; fired {s.fired} ticks, run now {s.manual_runs} times")
    return EXIT_OK


def _when(epoch: float | None, tz: str) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, schedules.check_tz(tz)).strftime("%Y-%m-%d %H:%M:%S %Z")


@schedule.command("remove")
@click.argument("name")
@redis_url_option
def remove(name: str, redis_url: str | None) -> int:
    """Remove schedule NAME (the batches it enqueued stay)."""
    connection, _ = connect(redis_url)
    schedules.remove(connection, name)
    click.echo(f"schedule {name}: removed")
    return EXIT_OK


@schedule.command("pause")
@click.argument("name")
@redis_url_option
def pause(name: str, redis_url: str | None) -> int:
    """Pause schedule NAME: no consumer fires it until it is resumed."""
    connection, _ = connect(redis_url)
    schedules.set_paused(connection, name, True)
    click.echo(f"schedule {name}: paused")
    return EXIT_OK


@schedule.command("resume")
@click.argument("name")
@redis_url_option
def resume(name: str, redis_url: str | None) -> int:
    """Resume schedule NAME from its next tick (the ticks missed while paused are skipped)."""
    connection, _ = connect(redis_url)
    schedules.set_paused(connection, name, False)
    click.echo(f"schedule {name}: resumed")
    return EXIT_OK


@schedule.command("run-now")
@click.argument("name")
@redis_url_option
def run_now(name: str, redis_url: str | None) -> int:
    """Enqueue one batch of schedule NAME now; not a tick, so the next tick fires as planned."""
    connection, _ = connect(redis_url)
    batch_id = schedules.run_now(connection, name)
    click.echo(f"schedule {name}: enqueued batch {batch_id}")
    return EXIT_OK


@schedule.command("apply")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--prune", is_flag=True, help="Also remove the schedules that the file does not name.")
@redis_url_option
def apply(file: Path, prune: bool, redis_url: str | None) -> int:
    """Make Redis hold the schedules of FILE (TOML, see schedules.example.toml): create and redefine,
    leave the others unless --prune. The whole file is validated first; applying twice changes nothing."""
    wanted = schedule_file.load_file(file)
    connection, _ = connect(redis_url)
    result = schedule_file.apply(connection, wanted, prune=prune)
    for verb, which in (("created", result.created), ("updated", result.updated),
                        ("unchanged", result.unchanged), ("removed", result.removed)):  # fmt: skip
        if which:
            click.echo(f"{verb}: {', '.join(which)}")
    if not (result.created or result.updated or result.removed):
        click.echo("nothing to change")
    return EXIT_OK
