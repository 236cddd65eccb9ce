"""``producer_main.py`` straight on Redis (the gateway's counterpart is ``remote.py``): a batch
enqueued as the producer's options say (``Enqueueing``), its jobs listed, then followed to its end
with ``--wait`` or ``--batch``: a line per task's end above a progress bar, then the summary.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import click
import redis

from workqueue import batches, crawling, outage, priorities, producer, timing
from workqueue.cli.common import EXIT_FAILED, EXIT_OK, fail
from workqueue.cli.report import echo_summary, echo_task_end
from workqueue.connection import connect
from workqueue.errors import RedisLostData, RedisUnavailable
from workqueue.settings import DEFAULT_QUEUE, RESULT_TTL


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
    # -- when work runs (issue 15): a time to run at, and the jobs or batches to wait for --
    when: datetime | None = None
    after: tuple[str, ...] = ()
    after_any: bool = False
    #: Unique jobs (``--unique``, ``--unique-key K``, ``--unique-for D``) and ``--results FILE``.
    unique: bool = False
    unique_key: str | None = None
    unique_for: str | None = None
    results: Path | None = None
    priority: int = priorities.NORMAL
    #: ``--limit-key K``: every job's limit key (``workqueue.limits``), instead of its task's own.
    limit_key: str | None = None
    #: ``--durable``: each transaction is acknowledged by a replica (``WAIT 1``) or the command fails.
    durable: bool = False


def enqueue_on_redis(calls: Sequence[producer.TaskCall], options: Enqueueing, redis_url: str | None) -> int:
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
        connection, calls, options.queue, max_queued=options.max_queued, on_wait=on_wait,
        when=options.when, after=options.after, after_any=options.after_any, durable=options.durable,
    )  # fmt: skip
    jobs = submission.jobs
    what = describe_calls(calls)
    click.echo(f"batch {submission.batch_id}: enqueued {len(jobs)} × {what} on {options.queue} ({target.display})")
    if options.when is not None or options.after:
        click.echo(f"  {describe_wait(options, jobs)}")
    for job in jobs[:10] if not options.quiet else []:
        click.echo(f"  {job.id}")
    if len(jobs) > 10 and not options.quiet:
        click.echo(f"  … and {len(jobs) - 10} more")
    echo_existing(submission)
    if not options.wait:
        return EXIT_OK
    code = follow_batch(connection, submission.batch_id, quiet=options.quiet, started=started, mark=mark)
    if any(call.task.name == "crawl" for call in calls) or options.results is not None:
        pages = crawling.results(connection, submission.batch_id)
        if any(call.task.name == "crawl" for call in calls):
            click.echo(crawling.summarise(pages).describe(time.monotonic() - started))
        if options.results is not None:
            write_results(options.results, pages)
    return code


def describe_calls(calls: Iterable[producer.TaskCall]) -> str:
    """The one call all of ``calls`` are, or "mixed tasks" (read only until two differ)."""
    first = None
    for call in calls:
        if first is None:
            first = call.describe()
        elif call.describe() != first:
            return "mixed tasks"
    return first or "mixed tasks"


def echo_existing(submission: producer.Submission) -> None:
    """Unique jobs: how many calls were new and which found their job already queued."""
    if not submission.existing:
        return
    click.echo(f"{len(submission.jobs)} new, {len(submission.existing)} already queued")
    for job_id in sorted(set(submission.existing.values()))[:10]:
        click.echo(f"  already queued: {job_id}")


def write_results(path: Path, pages: list[dict]) -> None:
    """``--results FILE``: each page's result, one JSON object a line."""
    try:
        path.write_text("".join(json.dumps(page, ensure_ascii=False) + "\n" for page in pages))
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror}", EXIT_FAILED)
    click.echo(f"results: {len(pages)} pages written to {path}")


def describe_wait(options: Enqueueing, jobs: list) -> str:
    """One line: when the batch runs, or what it waits for and where it stands."""
    if options.when is not None:
        return f"scheduled: runs at {timing.describe(options.when)}"
    what = "whatever their outcome" if options.after_any else "if they all finish, else cancelled"
    states = {job.get_status(refresh=False).value for job in jobs}
    now = " (already ended: " + "/".join(sorted(states)) + ")" if "deferred" not in states else ""
    return f"waits for {', '.join(options.after)}: runs {what}{now}"


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
        grown = {"at": time.monotonic()}

        def on_task(end: batches.TaskEnd) -> None:
            if not quiet:
                echo_task_end(end, live)
            if not end.redelivery:
                bar.update(1)
            if time.monotonic() - grown["at"] > 0.5:  # a crawl's batch grows as its pages find links
                grown["at"] = time.monotonic()
                try:
                    bar.length = batches.summary(connection, batch_id).total
                except (KeyError, redis.RedisError):
                    pass

        try:
            result = batches.wait(connection, batch_id, on_task=on_task, on_outage=on_outage, mark=mark)
        except RedisLostData as exc:
            raise RedisLostData(f"{exc}: batch {batch_id} and its jobs are gone") from None
        except KeyError:
            raise RedisUnavailable(f"batch {batch_id} is gone from Redis before its end (expired or deleted)") from None
    elapsed = time.monotonic() - started if started is not None else result.elapsed or 0.0
    echo_summary(batch_id, result.finished, result.failed, result.total, elapsed, result.failures)
    return EXIT_FAILED if result.failed else EXIT_OK
