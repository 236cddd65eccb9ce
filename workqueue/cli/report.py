"""The lines the producer prints about a batch, whether it follows it on Redis or by callback."""

from __future__ import annotations

import json

import click

from workqueue import batches


def echo_task_end(end: batches.TaskEnd, live: bool) -> None:
    """One line per task's end, above the progress bar."""
    detail = end.detail if isinstance(end.detail, str) else json.dumps(end.detail)
    again = " (run again: counted once)" if end.redelivery else ""
    line = f"{end.job_id} {end.task} {end.outcome} in {end.duration:.2f}s: {detail[:200]}{again}"
    click.echo(f"\r\x1b[K{line}" if live else line)


def echo_summary(
    batch_id: str, finished: int, failed: int, total: int, elapsed: float, failures: list[batches.TaskEnd]
) -> None:
    click.echo(f"batch {batch_id}: finished {finished}, failed {failed} of {total} in {elapsed:.2f} s")
    for end in failures[:20]:
        click.echo(f"  failed {end.job_id} ({end.task}): {end.detail}")
    if len(failures) > 20:
        click.echo(f"  … and {len(failures) - 20} more failures")
