"""``producer_main.py``: enqueue catalogue tasks, by prompt or by flag, and optionally follow them."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import click
import redis

import task_def
from workqueue import batches, jobstats, outage, producer
from workqueue.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    QueueName,
    TaskParam,
    can_prompt,
    fail,
    redis_url_option,
)
from workqueue.cli.remote import Gateway, enqueue_via_gateway
from workqueue.cli.report import echo_summary, echo_task_end
from workqueue.connection import connect
from workqueue.errors import RedisLostData, RedisUnavailable
from workqueue.settings import DEFAULT_QUEUE, DURABLE_WAIT, MAX_COUNT, RESULT_TTL, TOKEN_ENV


@dataclass(frozen=True)
class Enqueueing:
    """What every way of enqueueing shares, wherever the calls come from and wherever they go: the queue,
    each job's retries and timeout, backpressure, and whether (and how verbosely) to follow the batch."""

    queue: str = DEFAULT_QUEUE
    retries: int | None = None
    timeout: int | None = None
    max_queued: int | None = None
    wait: bool = False
    quiet: bool = False
    #: ``--durable``: each transaction is acknowledged by a replica (``WAIT 1``) or the command fails.
    durable: bool = False


def list_tasks() -> None:
    """``--list-tasks``: each task of the catalogue, with its parameters' types, defaults and bounds."""
    for task in task_def.CATALOGUE.values():
        click.echo(f"{task.name:<10} {task.description}")
        for p in task.params:
            default = "required" if p.default is None else f"default {p.default!r}"
            bounds = f", {p.describe_bounds()}" if p.describe_bounds() else ""
            click.echo(f"    {p.name:<14} {p.type.__name__:<6} {p.help} ({default}{bounds})")


def print_stats(redis_url: str | None, queue: str | None) -> int:
    """``--stats``: statistics per queue and task, of one queue if given."""
    connection, _ = connect(redis_url)
    for line in jobstats.format_report(jobstats.collect(connection, [queue] if queue else None)):
        click.echo(line)
    return EXIT_OK


def follow(redis_url: str | None, batch_id: str, quiet: bool) -> int:
    """``--batch ID``: follow a batch enqueued earlier, by this or another producer, to its end."""
    connection, _ = connect(redis_url)
    return follow_batch(connection, batch_id, quiet=quiet, mark=outage.DataMark(connection))


def calls_from_file(path: Path, options: Enqueueing) -> list[producer.TaskCall]:
    """``--from-file``: the file's calls, validated whole before any is enqueued."""
    return producer.load_calls(path, retries=options.retries, timeout=options.timeout)


def calls_from_flags(
    task_name: str, pairs: tuple[str, ...], count: int | None, options: Enqueueing
) -> list[producer.TaskCall]:
    """``--task NAME --param K=V --count N``: one call, N times."""
    params = producer.parse_param_pairs(pairs)
    call = producer.TaskCall.build(task_name, params, retries=options.retries, timeout=options.timeout)
    return [call] * (count or 1)


def prompt_calls() -> tuple[list[producer.TaskCall], str]:
    """Ask for the task, each of its parameters, the queue and how many."""
    names = list(task_def.CATALOGUE)
    for number, task in enumerate(task_def.CATALOGUE.values(), 1):
        click.echo(f"  {number}. {task.name:<10} {task.description}")
    numbers = [str(i) for i in range(1, len(names) + 1)]
    choice = click.prompt(
        "Task (name or number)", default=names[0], type=click.Choice([*names, *numbers]), show_choices=False
    )
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
@click.option(
    "--from-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help='JSON lines of {"task": ..., "params": {...}}, validated whole, enqueued together.',
)
@click.option(
    "--retries",
    type=click.IntRange(0, producer.MAX_RETRIES),
    default=None,
    help="Retries for a failed job (default: the task's), waits doubling with jitter.",
)
@click.option(
    "--timeout",
    type=click.IntRange(1, producer.MAX_TIMEOUT),
    default=None,
    help="Seconds a job may run (default: the task's).",
)
@click.option(
    "--max-queued",
    type=click.IntRange(1, MAX_COUNT),
    default=None,
    help="Backpressure: wait while the queue holds this many jobs, enqueue as it drains.",
)
@click.option("--wait", is_flag=True, help="Follow the batch: a line per task, a progress bar; exit 1 if any failed.")
@click.option("--quiet", is_flag=True, help="With --wait or --batch: the progress bar and summary only.")
@click.option("--batch", "batch_id", metavar="ID", default=None, help="Follow a batch already enqueued, to its end.")
@click.option("--stats", "show_stats", is_flag=True, help="Print statistics per queue and task (--queue: one queue).")
@click.option("--list-tasks", "show_catalogue", is_flag=True, help="List the catalogue with each task's parameters.")
@click.option(
    "--via",
    metavar="URL",
    default=None,
    help="Produce through the HTTP gateway at URL (no Redis needed); --wait gets results by callback.",
)
@click.option("--threads", type=click.IntRange(1, 32), default=None, help="With --via: send from N threads at once.")
@click.option("--token", envvar=TOKEN_ENV, default=None, show_envvar=True, help="With --via: the gateway's token.")
@click.option(
    "--callback-host",
    metavar="HOST",
    default=None,
    help="With --via --wait: the address the gateway reaches this machine on (default: the one "
    "that reaches the gateway).",
)
@click.option(
    "--callback-port",
    type=click.IntRange(0, 65535),
    default=0,
    help="With --via --wait: the port results come back to (default: any free one).",
)
@click.option(
    "--durable",
    is_flag=True,
    help=f"Report enqueued only once a replica holds the jobs (WAIT 1, up to {DURABLE_WAIT:g} s); exit 1 if none does.",
)
@redis_url_option
def main(
    task_name: str | None,
    pairs: tuple[str, ...],
    count: int | None,
    queue: str | None,
    from_file: Path | None,
    retries: int | None,
    timeout: int | None,
    max_queued: int | None,
    wait: bool,
    quiet: bool,
    batch_id: str | None,
    show_stats: bool,
    show_catalogue: bool,
    via: str | None,
    threads: int | None,
    token: str | None,
    callback_host: str | None,
    callback_port: int,
    durable: bool,
    redis_url: str | None,
) -> int:
    """Enqueue long-running tasks as a batch. Run bare at a terminal, it asks for everything."""
    if show_catalogue:
        list_tasks()
        return EXIT_OK
    described = task_name or pairs or count or from_file
    if via is None and (threads or callback_host or callback_port):
        fail("--threads, --callback-host and --callback-port go with --via URL")
    if via is not None and (show_stats or batch_id or max_queued or redis_url):
        fail("--via sends through the gateway: not with --stats, --batch, --max-queued or --redis-url")
    if show_stats or batch_id:
        if described or max_queued or wait or (show_stats and batch_id):
            fail("--stats and --batch each stand alone (--stats takes --queue; --batch takes --quiet)")
        if not batch_id:
            return print_stats(redis_url, queue)
        return follow(redis_url, batch_id, quiet)
    options = Enqueueing(
        queue=queue or DEFAULT_QUEUE, retries=retries, timeout=timeout, max_queued=max_queued, wait=wait, quiet=quiet
    )
    if durable:
        if via is not None:
            fail('--durable goes straight to Redis: not with --via (the gateway takes a "durable" field)')
        options = replace(options, durable=True)
    if from_file and (task_name or pairs or count):
        fail("--from-file names its own tasks; do not combine it with --task, --param or --count")
    if from_file:
        calls = calls_from_file(from_file, options)
    elif task_name:
        calls = calls_from_flags(task_name, pairs, count, options)
    elif described or queue or not can_prompt():
        fail("missing --task NAME (or --from-file); with no terminal there is nothing to prompt on")
    else:
        calls, prompted_queue = prompt_calls()
        options = replace(options, queue=prompted_queue)
    if via is not None:
        gateway = Gateway(via, token, threads or 1, callback_host=callback_host, callback_port=callback_port)
        return enqueue_via_gateway(gateway, calls, options.queue, wait=options.wait, quiet=options.quiet)
    return enqueue_on_redis(calls, options, redis_url)


def enqueue_on_redis(calls: list[producer.TaskCall], options: Enqueueing, redis_url: str | None) -> int:
    """Enqueue the calls as one batch straight on Redis (waiting while the queue is full, with
    ``--max-queued``), list the jobs, and follow the batch with ``--wait``."""
    try:
        connection, target = connect(redis_url)
    except RedisUnavailable as exc:
        raise RedisUnavailable(f"{exc}; nothing was enqueued") from None
    mark = outage.DataMark(connection)  # before enqueueing: Redis losing the batch later is then told apart
    started = time.monotonic()
    waited: list[int] = []

    def on_wait(queued: int) -> None:
        if not waited:
            click.echo(
                f"waiting: {options.queue} holds {queued} jobs (--max-queued {options.max_queued}); "
                "enqueueing as it drains"
            )
        waited.append(queued)

    submission = producer.enqueue(
        connection, calls, options.queue, max_queued=options.max_queued, on_wait=on_wait, durable=options.durable
    )
    jobs = submission.jobs
    what = calls[0].describe() if len({c.describe() for c in calls}) == 1 else "mixed tasks"
    click.echo(f"batch {submission.batch_id}: enqueued {len(jobs)} × {what} on {options.queue} ({target.display})")
    for job in jobs[:10] if not options.quiet else []:
        click.echo(f"  {job.id}")
    if len(jobs) > 10 and not options.quiet:
        click.echo(f"  … and {len(jobs) - 10} more")
    if not options.wait:
        return EXIT_OK
    return follow_batch(connection, submission.batch_id, quiet=options.quiet, started=started, mark=mark)


def follow_batch(
    connection: redis.Redis,
    batch_id: str,
    *,
    quiet: bool = False,
    started: float | None = None,
    mark: outage.DataMark | None = None,
) -> int:
    """A line per task's end above a progress bar, then the batch's summary; exit 1 if any failed.
    A Redis outage meanwhile is waited out (a line says so); Redis losing its data ends it, saying so."""
    try:
        total = batches.summary(connection, batch_id).total
    except KeyError:
        if mark is not None and mark.since is not None and time.time() - mark.since < RESULT_TTL:
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(mark.since))
            fail(
                f"no such batch: {batch_id}; this Redis holds workqueue data only since {since} (first used "
                "then, or it lost its data: restarted without persistence?)"
            )
        fail(f"no such batch: {batch_id} (batches are kept for a day)")
    live = sys.stdout.isatty()

    def on_outage(what: str | None) -> None:
        if live:
            click.echo()
        click.echo(f"{what}; waiting for it..." if what else f"Redis answers again; following batch {batch_id}")

    with click.progressbar(length=total, label=f"batch {batch_id}", show_pos=True) as bar:

        def on_task(end: batches.TaskEnd) -> None:
            if not quiet:
                echo_task_end(end, live)
            if not end.redelivery:
                bar.update(1)

        try:
            result = batches.wait(connection, batch_id, on_task=on_task, on_outage=on_outage, mark=mark)
        except RedisLostData as exc:
            raise RedisLostData(f"{exc}: batch {batch_id} and its jobs are gone") from None
        except KeyError:
            raise RedisUnavailable(f"batch {batch_id} is gone from Redis before its end (expired or deleted)") from None
    elapsed = time.monotonic() - started if started is not None else result.elapsed or 0.0
    echo_summary(batch_id, result.finished, result.failed, result.total, elapsed, result.failures)
    return EXIT_FAILED if result.failed else EXIT_OK
