"""``kill_thread/``: stop workers (all, a queue's, one by name) and jobs, through Redis."""

from __future__ import annotations

import time

import click

from workqueue import control
from workqueue.cli.common import EXIT_FAILED, EXIT_OK, redis_url_option
from workqueue.connection import connect
from workqueue.settings import HEARTBEAT_TTL, MAX_TIMEOUT, SWEEP_INTERVAL

_settings = {"help_option_names": ["-h", "--help"]}


@click.command(context_settings=_settings)
@click.option("--all", "every", is_flag=True, help="Stop every worker.")
@click.option("--queue", default=None, metavar="NAME", help="Stop the workers listening on this queue.")
@click.option("--worker", "name", default=None, metavar="NAME", help="Stop one worker, by name.")
@click.option(
    "--host",
    default=None,
    metavar="NAME",
    help="Stop the workers of one host (its hostname, a pod's name): a machine or pod draining.",
)
@click.option("--now", is_flag=True, help="Stop at once; the running job goes back to the front of its queue.")
@click.option(
    "--timeout",
    type=click.FloatRange(0, MAX_TIMEOUT),
    default=30.0,
    show_default=True,
    help="Seconds to wait for the workers to leave.",
)
@redis_url_option
def kill_workers(
    every: bool,
    queue: str | None,
    name: str | None,
    host: str | None,
    now: bool,
    timeout: float,
    redis_url: str | None,
) -> int:
    """Stop workers anywhere: gracefully (each finishes its current job) or --now."""
    connection, _ = connect(redis_url)
    workers = control.select_workers(connection, every=every, queue=queue, name=name, host=host)
    requests = control.request_worker_stop(connection, workers, now=now, by="kill_workers")
    how = "at once" if now else "after its current job"
    for request in requests:
        running = f" (running job {request.job_id})" if request.job_id else " (idle)"
        click.echo(f"asked {request.worker} to stop {how}{running}")
    stuck = []
    for worker, gone in control.wait_gone(connection, [r.worker for r in requests], timeout):
        click.echo(f"{worker} stopped" if gone else f"{worker} did not stop within {timeout:g} s")
        if not gone:
            stuck.append(worker)
    if now:
        for request in requests:
            if request.job_id:
                click.echo(control.job_outcome(connection, request.job_id, request.worker))
    return EXIT_FAILED if stuck else EXIT_OK


@click.command(context_settings=_settings)
@click.argument("job_ids", nargs=-1)
@click.option(
    "--batch", "batch_id", metavar="ID", default=None, help="Every job of a batch: cancel the queued, stop the running."
)
@click.option(
    "--timeout",
    type=click.FloatRange(0, 3600),
    default=10.0,
    show_default=True,
    help="Seconds to wait for a running job to stop.",
)
@redis_url_option
def kill_job(job_ids: tuple[str, ...], batch_id: str | None, timeout: float, redis_url: str | None) -> int:
    """Stop running jobs and cancel queued or scheduled ones, by id or by batch."""
    if not job_ids and not batch_id:
        raise click.UsageError("give job ids, or --batch ID")
    connection, _ = connect(redis_url)
    code = EXIT_OK
    outcomes = [
        control.stop_job(connection, job_id, by="kill_job", timeout=timeout) for job_id in dict.fromkeys(job_ids)
    ]
    if batch_id:
        outcomes += control.stop_batch(connection, batch_id, by="kill_job", timeout=timeout)
    for outcome in outcomes:
        click.echo(outcome.message, err=outcome.failed)
        if outcome.failed:
            code = EXIT_FAILED
    return code


@click.command(context_settings=_settings)
@click.option(
    "--wait",
    is_flag=True,
    help=f"Also wait out the registrations of workers on other hosts ({HEARTBEAT_TTL} s after their "
    "last heartbeat), to clean those that died just now.",
)
@redis_url_option
def clean_workers(wait: bool, redis_url: str | None) -> int:
    """Remove dead workers and hand back their jobs: those of this host whose process is gone, at
    once; those whose heartbeat expired (SIGKILL, lost machine), wherever they ran."""
    connection, _ = connect(redis_url)
    ghosts, handed = control.clean(connection)
    if wait:
        deadline = time.monotonic() + HEARTBEAT_TTL + SWEEP_INTERVAL
        while time.monotonic() < deadline:
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            more_ghosts, more_handed = control.clean(connection)
            ghosts += more_ghosts
            handed += more_handed
    for name in dict.fromkeys(ghosts):
        click.echo(f"removed dead worker {name}")
    for outcome in handed:
        click.echo(outcome.describe())
    if not ghosts and not handed:
        click.echo("no dead workers")
    return EXIT_OK
