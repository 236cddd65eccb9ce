"""``producer_main.py --via URL``: the producer through the HTTP gateway, with no Redis access:
batches sent from ``--threads`` threads, results received by callback, the same lines and summary
as a producer on Redis."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import click

from workqueue import batches, producer
from workqueue.cli.common import EXIT_FAILED, EXIT_OK
from workqueue.cli.report import echo_summary, echo_task_end
from workqueue.gateway import client as remote

#: Seconds without a callback after which the producer asks the gateway how its batches stand.
QUIET_SPELL = 10.0


@dataclass(frozen=True)
class Gateway:
    """Where ``--via`` sends and how: the gateway, its token, the sending threads, and the address and
    port the gateway's result callbacks come back to with ``--wait``."""

    url: str
    token: str | None = None
    threads: int = 1
    callback_host: str | None = None
    callback_port: int = 0


def enqueue_via_gateway(
    gateway: Gateway,
    calls: list[producer.TaskCall],
    queue: str,
    *,
    wait: bool,
    quiet: bool,
    fields: Mapping[str, Any] | None = None,
) -> int:
    """Send the calls through the gateway (as batches, from ``threads`` threads); with ``wait``, follow their
    results by callback and print the same lines and summary as a producer on Redis."""
    client = remote.GatewayClient(gateway.url, gateway.token)
    started = time.monotonic()
    if not wait:
        _report(remote.send(client, calls, queue, gateway.threads, fields=fields), calls, gateway.url, quiet)
        return EXIT_OK
    host = gateway.callback_host or remote.address_towards(gateway.url)
    with remote.ResultReceiver(host, gateway.callback_port) as receiver:
        sent = remote.send(
            client, calls, queue, gateway.threads, callback_url=receiver.url, callback_secret=receiver.secret,
            fields=fields,
        )  # fmt: skip
        _report(sent, calls, gateway.url, quiet)
        click.echo(f"results come back to {receiver.url}")
        _follow(client, receiver, sent, quiet)
    return _summarise(sent, receiver.tally, started)


def _summarise(sent: list[remote.Sent], tally: remote.Tally, started: float) -> int:
    """Each batch's summary, one over all batches if several, and what the callbacks brought; exit 1
    if any task failed or its result never came."""
    failures = []
    for s in sent:
        summary = tally.batches[s.batch_id]
        ends = [_end(tally.tasks[j]) for j in s.job_ids if j in tally.tasks]
        failed = [e for e in ends if e.outcome != "finished"]
        failures += failed
        echo_summary(
            s.batch_id, summary["finished"], summary["failed"], summary["total"], summary["elapsed"] or 0.0, failed
        )
    total = sum(len(s.job_ids) for s in sent)
    if len(sent) > 1:
        click.echo(
            f"all {len(sent)} batches: finished {total - len(failures)}, failed {len(failures)} of {total} "
            f"in {time.monotonic() - started:.2f} s"
        )
    click.echo(
        f"results received by callback: {len(tally.tasks)} of {total}, {tally.redeliveries} marked "
        f"redeliveries, {tally.unmarked_duplicates} unmarked duplicates, {tally.refused} refused signatures"
    )
    return EXIT_FAILED if failures or len(tally.tasks) < total else EXIT_OK


def _report(sent: list[remote.Sent], calls: list[producer.TaskCall], via: str, quiet: bool) -> None:
    what = calls[0].describe() if len({c.describe() for c in calls}) == 1 else "mixed tasks"
    for s in sent:
        click.echo(f"batch {s.batch_id}: enqueued {len(s.job_ids)} × {what} on {s.queue} (via {via})")
        if not quiet and len(sent) == 1:
            for job_id in s.job_ids[:10]:
                click.echo(f"  {job_id}")
            if len(s.job_ids) > 10:
                click.echo(f"  … and {len(s.job_ids) - 10} more")


def _end(payload: dict) -> batches.TaskEnd:
    detail = payload["result"] if payload["outcome"] == "finished" else payload["error"]
    return batches.TaskEnd(
        payload["job_id"],
        payload["task"],
        payload["outcome"],
        detail,
        payload["duration"],
        bool(payload.get("redelivery")),
    )


def _follow(
    client: remote.GatewayClient, receiver: remote.ResultReceiver, sent: list[remote.Sent], quiet: bool
) -> None:
    """Print each result as it arrives, under a progress bar, until every batch's end has."""
    pending = {s.batch_id for s in sent}
    warned: set[str] = set()
    live = sys.stdout.isatty()
    with click.progressbar(length=sum(len(s.job_ids) for s in sent), label="results", show_pos=True) as bar:
        for got in receiver.deliveries(timeout=QUIET_SPELL):
            if got is None:
                _check_stalled(client, receiver, pending, warned)
                continue
            payload = got.payload
            if payload["type"] == "batch":
                pending.discard(payload["batch_id"])
                if not pending:
                    return
                continue
            end = _end(payload)
            if not quiet and not got.repeat:
                echo_task_end(end, live)
            if not got.repeat and not payload.get("ran_again"):
                bar.update(1)


def _check_stalled(
    client: remote.GatewayClient, receiver: remote.ResultReceiver, pending: set[str], warned: set[str]
) -> None:
    """Say so, once per batch, when the gateway has a batch done whose results have not arrived."""
    for batch_id in sorted(pending - warned):
        if client.batch(batch_id)["done"]:
            warned.add(batch_id)
            click.echo(
                f"note: batch {batch_id} is done but its results have not all arrived; can the gateway "
                f"reach {receiver.url}? (--callback-host sets the address it is given)",
                err=True,
            )
