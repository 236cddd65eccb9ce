"""``producer_main.py``: enqueue catalogue tasks, by prompt or by flag, and optionally follow them."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

import task_def
from workqueue import producer
from workqueue.cli.common import EXIT_FAILED, EXIT_OK, QueueName, TaskParam, can_prompt, fail, redis_url_option
from workqueue.connection import connect
from workqueue.errors import RedisUnavailable
from workqueue.settings import DEFAULT_QUEUE, MAX_COUNT


def list_tasks() -> None:
    for task in task_def.CATALOGUE.values():
        click.echo(f"{task.name:<10} {task.description}")
        for p in task.params:
            default = "required" if p.default is None else f"default {p.default!r}"
            bounds = f", {p.describe_bounds()}" if p.describe_bounds() else ""
            click.echo(f"    {p.name:<14} {p.type.__name__:<6} {p.help} ({default}{bounds})")


def prompt_calls() -> tuple[list[producer.TaskCall], str]:
    """Ask for the task, each of its parameters, the queue and how many."""
    names = list(task_def.CATALOGUE)
    for number, task in enumerate(task_def.CATALOGUE.values(), 1):
        click.echo(f"  {number}. {task.name:<10} {task.description}")
    choice = click.prompt("Task (name or number)", default=names[0], type=click.Choice(names + [str(i) for i in range(1, len(names) + 1)]), show_choices=False)
    task = task_def.CATALOGUE[names[int(choice) - 1]] if choice.isdigit() else task_def.CATALOGUE[choice]
    params = {}
    for p in task.params:
        bounds = f" [{p.describe_bounds()}]" if p.describe_bounds() else ""
        params[p.name] = click.prompt(f"{p.name}: {p.help}{bounds}", default=p.default, type=TaskParam(p))
    queue = click.prompt("Queue", default=DEFAULT_QUEUE, type=QueueName())
    count = click.prompt("How many jobs", default=1, type=click.IntRange(1, MAX_COUNT))
    return [producer.TaskCall.build(task.name, params)] * count, queue


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--task", "task_name", metavar="NAME", help="Task from the catalogue (see --list-tasks).")
@click.option("--param", "pairs", metavar="KEY=VALUE", multiple=True, help="A task parameter; repeatable.")
@click.option("--count", type=click.IntRange(1, MAX_COUNT), default=None, help="How many jobs (default 1).")
@click.option("--queue", type=QueueName(), default=None, help=f"Queue to enqueue on (default {DEFAULT_QUEUE}).")
@click.option("--from-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help='JSON lines of {"task": ..., "params": {...}}, validated whole, enqueued together.')
@click.option("--retries", type=click.IntRange(0, producer.MAX_RETRIES), default=None,
              help="Retries for a failed job (default: the task's), waits doubling with jitter.")
@click.option("--timeout", type=click.IntRange(1, producer.MAX_TIMEOUT), default=None,
              help="Seconds a job may run (default: the task's).")
@click.option("--wait", is_flag=True, help="Show a progress bar until every job ends; exit 1 if any failed.")
@click.option("--list-tasks", "show_catalogue", is_flag=True, help="List the catalogue with each task's parameters, and exit.")
@redis_url_option
def main(task_name: Optional[str], pairs: tuple[str, ...], count: Optional[int], queue: Optional[str],
         from_file: Optional[Path], retries: Optional[int], timeout: Optional[int], wait: bool,
         show_catalogue: bool, redis_url: Optional[str]) -> int:
    """Enqueue long-running tasks. Run bare at a terminal, it asks for everything."""
    if show_catalogue:
        list_tasks()
        return EXIT_OK
    described = task_name or pairs or count or queue or from_file
    if from_file and (task_name or pairs or count):
        fail("--from-file names its own tasks; do not combine it with --task, --param or --count")
    if from_file:
        calls = producer.load_calls(from_file)
    elif task_name:
        call = producer.TaskCall.build(task_name, producer.parse_param_pairs(pairs), retries=retries, timeout=timeout)
        calls = [call] * (count or 1)
    elif described or not can_prompt():
        fail("missing --task NAME (or --from-file); with no terminal there is nothing to prompt on")
    else:
        calls, queue = prompt_calls()
    queue = queue or DEFAULT_QUEUE
    try:
        connection, target = connect(redis_url)
    except RedisUnavailable as exc:
        raise RedisUnavailable(f"{exc}; nothing was enqueued") from None
    jobs = producer.enqueue(connection, calls, queue)
    what = calls[0].describe() if len({c.describe() for c in calls}) == 1 else "mixed tasks"
    click.echo(f"enqueued {len(jobs)} × {what} on {queue} ({target.display})")
    for job in jobs[:10]:
        click.echo(f"  {job.id}")
    if len(jobs) > 10:
        click.echo(f"  … and {len(jobs) - 10} more")
    if not wait:
        return EXIT_OK
    return follow_jobs(connection, [job.id for job in jobs])


def follow_jobs(connection, job_ids: list[str]) -> int:
    """A progress bar until every job ends, then the summary; the exit code says if any failed."""
    tally = None
    with click.progressbar(length=len(job_ids), label="running", show_pos=True) as bar:
        for tally in producer.follow(connection, job_ids):
            bar.update(tally.ended - bar.pos)
            bar.label = f"finished {tally.finished}, failed {len(tally.failed)}"
    assert tally is not None
    click.echo(f"finished {tally.finished}, failed {len(tally.failed)} of {tally.total} in {tally.elapsed:.2f} s")
    if not tally.failed:
        return EXIT_OK
    for job_id, reason in producer.failure_reasons(connection, tally.failed[:20]).items():
        click.echo(f"  failed {job_id}: {reason}")
    if len(tally.failed) > 20:
        click.echo(f"  … and {len(tally.failed) - 20} more failures")
    return EXIT_FAILED
