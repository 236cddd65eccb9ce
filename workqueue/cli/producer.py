"""``producer_main.py``: enqueue catalogue tasks, by prompt or by flag, and optionally follow them.
The calls, from flags, a file or prompts, go straight on Redis (``on_redis.py``) or through the
gateway (``remote.py``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

import task_def
from workqueue import calls as task_calls
from workqueue import jobstats, limits, outage, priorities, producer, timing
from workqueue.cli.common import (
    EXIT_OK,
    QueueName,
    TaskParam,
    can_prompt,
    fail,
    redis_url_option,
)
from workqueue.cli.on_redis import Enqueueing, enqueue_on_redis, follow_batch
from workqueue.cli.remote import Gateway, enqueue_via_gateway
from workqueue.connection import connect
from workqueue.errors import BadInput
from workqueue.settings import DEFAULT_QUEUE, DURABLE_WAIT, MAX_COUNT, TOKEN_ENV


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


def calls_from_file(path: Path, options: Enqueueing) -> task_calls.CallFile:
    """``--from-file``: the file's calls, validated whole before any is enqueued, then read a chunk at a time."""
    return task_calls.CallFile(path, retries=options.retries, timeout=options.timeout, limit_key=options.limit_key)


def calls_from_flags(
    task_name: str, pairs: tuple[str, ...], count: int | None, options: Enqueueing
) -> list[producer.TaskCall]:
    """``--task NAME --param K=V --count N``: one call, N times."""
    params = task_calls.parse_param_pairs(pairs)
    call = producer.TaskCall.build(
        task_name, params, retries=options.retries, timeout=options.timeout, limit_key=options.limit_key
    )
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


# -- when work runs (issue 15): --in/--at, --after/--after-any, and their prompts ---------------------


def when_options(command: Callable) -> Callable:
    """The options that say when a batch runs: a delay or a time, and the work it waits for."""
    options = [
        click.option("--in", "run_in", metavar="DELAY", default=None,
                     help="Run after this delay: 90s, 10m, 2h, 1h30m."),
        click.option("--at", "run_at", metavar="TIME", default=None,
                     help="Run at this time: 2026-12-01T03:00 (local time here) or with a zone, ...T03:00+01:00."),
        click.option("--after", "after", metavar="BATCH_OR_JOB", multiple=True,
                     help="Wait until this batch (all its jobs) or job has ended; repeatable. Runs only if all "
                     "finished, else is cancelled with the reason."),
        click.option("--after-any", is_flag=True, help="With --after: run whatever the outcome of what it waits for."),
    ]  # fmt: skip
    for option in reversed(options):
        command = option(command)
    return command


def resolve_when(run_in: str | None, run_at: str | None, after: tuple[str, ...], after_any: bool) -> datetime | None:
    """``--in``/``--at`` as the time to run at (None: now); bad combinations and values exit 2."""
    if run_in is not None and run_at is not None:
        raise BadInput("give either --in (a delay) or --at (a time), not both")
    if after_any and not after:
        raise BadInput("--after-any goes with --after BATCH_OR_JOB")
    try:
        return timing.resolve(run_at, run_in)
    except BadInput as exc:
        raise BadInput(f"--{exc}") from None  # "--in: ..." names the flag


def prompt_when() -> datetime | None:
    """Ask when the batch should run: "now" (the default), a delay or a time."""
    return click.prompt(
        "When? (now, a delay such as 10m, or a time such as 2026-12-01T03:00)", default="now", value_proc=_when_value
    )


def when_fields(options: Enqueueing) -> dict[str, Any]:
    """When the batch runs, as the gateway's fields (``at``, ``after``, ``after_any``)."""
    fields: dict[str, Any] = {}
    if options.when is not None:
        fields["at"] = options.when.isoformat()
    if options.after:
        fields["after"] = list(options.after)
        fields["after_any"] = options.after_any
    return fields


def _when_value(text: str) -> datetime | None:
    try:
        return timing.parse_when(text)
    except BadInput as exc:
        raise click.UsageError(str(exc)) from None


class PriorityLevel(click.ParamType):
    """``--priority``: a level's name or a number 0-9 (``workqueue.priorities``)."""

    name = "level"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            return priorities.parse(value)
        except BadInput as exc:
            self.fail(str(exc), param, ctx)


def prompt_priority() -> int:
    """Ask the batch's priority inside its queue: "normal" (the default), a level's name or 0-9."""
    levels = ", ".join(priorities.LEVELS)
    return click.prompt(f"Priority ({levels} or 0-9, higher first)", default="normal", type=PriorityLevel())


def with_priority(calls: Sequence[producer.TaskCall], level: int) -> Sequence[producer.TaskCall]:
    """``--priority``: every call at ``level`` (the default, normal, changes nothing)."""
    return calls if level == priorities.NORMAL else task_calls.map_calls(calls, partial(replace, priority=level))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--task", "task_name", metavar="NAME", help="Task from the catalogue (see --list-tasks).")
@click.option(
    "--param", "pairs", metavar="KEY=VALUE", multiple=True, help="A task parameter; repeatable (KEY=VALUE ... too)."
)
@click.argument("more_pairs", metavar="[KEY=VALUE]...", nargs=-1)
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
    type=click.IntRange(0, task_calls.MAX_RETRIES),
    default=None,
    help="Retries for a failed job (default: the task's), waits doubling with jitter.",
)
@click.option(
    "--timeout",
    type=click.IntRange(1, task_calls.MAX_TIMEOUT),
    default=None,
    help="Seconds a job may run (default: the task's).",
)
@click.option(
    "--max-queued",
    type=click.IntRange(1, MAX_COUNT),
    default=None,
    help="Backpressure: wait while the queue holds this many jobs, enqueue as it drains.",
)
@click.option(
    "--priority",
    type=PriorityLevel(),
    default="normal",
    help=f"Priority inside the queue: {priorities.describe_levels()} or 0-9; higher runs first. Default normal.",
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
@when_options
@click.option("--unique", is_flag=True, help="No new job while one of this task and parameters waits or runs.")
@click.option("--unique-key", metavar="K", default=None, help="No new job while one with key K waits or runs.")
@click.option(
    "--unique-for", metavar="DURATION", default=None, help="With --unique(-key): hold the key this long after the end."
)
@click.option(
    "--results",
    "results_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="With --wait: write each crawled page's result to FILE as JSON lines.",
)
@click.option(
    "--limit-key",
    metavar="K",
    default=None,
    help="Per-key limits: the jobs' limit key (default: the task's own, e.g. domain:<host> for scrape).",
)
@click.option(
    "--durable",
    is_flag=True,
    help=f"Report enqueued only once a replica holds the jobs (WAIT 1, up to {DURABLE_WAIT:g} s); exit 1 if none does.",
)
# -- memory per job (issue 18): how long finished jobs are kept --
@click.option(
    "--keep-results",
    "--result-ttl",
    "keep_results",
    metavar="DURATION",
    default=None,
    help="Keep each finished job and its result this long (90s, 10m, 2h, 1d; 0 to 30 days; default the task's, "
    "else a day).",
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
    priority: int,
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
    run_in: str | None,
    run_at: str | None,
    after: tuple[str, ...],
    after_any: bool,
    more_pairs: tuple[str, ...],
    unique: bool,
    unique_key: str | None,
    unique_for: str | None,
    results_file: Path | None,
    limit_key: str | None,
    durable: bool,
    keep_results: str | None,
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
        if described or max_queued or wait or (show_stats and batch_id) or run_in or run_at or after:
            fail("--stats and --batch each stand alone (--stats takes --queue; --batch takes --quiet)")
        if not batch_id:
            return print_stats(redis_url, queue)
        return follow(redis_url, batch_id, quiet)
    pairs = _with_more_pairs(pairs, more_pairs)
    options = Enqueueing(
        queue=queue or DEFAULT_QUEUE, retries=retries, timeout=timeout, max_queued=max_queued, wait=wait, quiet=quiet
    )
    options = replace(options, when=resolve_when(run_in, run_at, after, after_any), after=after, after_any=after_any)
    options = _unique_and_results(options, unique, unique_key, unique_for, results_file, via)
    options = replace(options, priority=priority)
    if limit_key is not None:
        options = replace(options, limit_key=limits.check_key(limit_key))
    if durable:
        if via is not None:
            fail('--durable goes straight to Redis: not with --via (the gateway takes a "durable" field)')
        options = replace(options, durable=True)
    if from_file and (task_name or pairs or count):
        fail("--from-file names its own tasks; do not combine it with --task, --param or --count")
    calls: Sequence[producer.TaskCall]
    if from_file:
        calls = calls_from_file(from_file, options)
    elif task_name:
        calls = calls_from_flags(task_name, pairs, count, options)
    elif described or queue or not can_prompt():
        fail("missing --task NAME (or --from-file); with no terminal there is nothing to prompt on")
    else:
        calls, prompted_queue = prompt_calls()
        options = replace(options, queue=prompted_queue)
        if options.when is None and not options.after:
            options = replace(options, when=prompt_when())
        if click.get_current_context().get_parameter_source("priority") is ParameterSource.DEFAULT:
            options = replace(options, priority=prompt_priority())
    calls = as_unique(calls, options)
    calls = with_priority(calls, options.priority)
    calls = task_calls.keeping_results(calls, keep_results)
    if via is not None:
        gateway = Gateway(via, token, threads or 1, callback_host=callback_host, callback_port=callback_port)
        return enqueue_via_gateway(
            gateway, list(calls), options.queue, wait=options.wait, quiet=options.quiet, fields=when_fields(options)
        )
    return enqueue_on_redis(calls, options, redis_url)


def as_unique(calls: Sequence[producer.TaskCall], options: Enqueueing) -> Sequence[producer.TaskCall]:
    """The calls, wherever they came from (flags, a file, prompts), as unique jobs if asked."""
    if not (options.unique or options.unique_key is not None):
        return calls

    def unique(c: producer.TaskCall) -> producer.TaskCall:
        return producer.TaskCall.build(
            c.task.name, c.params, retries=c.retries, timeout=c.timeout,
            unique=options.unique, unique_key=options.unique_key, unique_for=options.unique_for,
            limit_key=c.limit_key, priority=c.priority,
        )  # fmt: skip

    return task_calls.map_calls(calls, unique)


def _with_more_pairs(pairs: tuple[str, ...], more: tuple[str, ...]) -> tuple[str, ...]:
    """``--param a=1 b=2``: the KEY=VALUE words after a ``--param`` are parameters too."""
    for word in more:
        if "=" not in word:
            fail(f"unexpected argument {word!r}: parameters are KEY=VALUE, e.g. --param seconds=2")
    if more and not pairs:
        fail(f"{more[0]!r}: parameters follow --param, e.g. --param {more[0]}")
    return pairs + more


def _unique_and_results(
    options: Enqueueing,
    unique: bool,
    unique_key: str | None,
    unique_for: str | None,
    results_file: Path | None,
    via: str | None,
) -> Enqueueing:
    """The unique-job and ``--results`` options, checked against each other (usage errors exit 2)."""
    if unique and unique_key is not None:
        fail("give --unique (the task and its parameters) or --unique-key K, not both")
    if unique_for is not None and not (unique or unique_key is not None):
        fail("--unique-for goes with --unique or --unique-key K")
    if results_file is not None and (not options.wait or via is not None):
        fail("--results FILE goes with --wait, straight on Redis (not --via)")
    return replace(options, unique=unique, unique_key=unique_key, unique_for=unique_for, results=results_file)
