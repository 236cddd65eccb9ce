"""``python -m workqueue limit``: per-key rate and concurrency limits (``workqueue.limits``)."""

from __future__ import annotations

import time

import click

from workqueue import limits
from workqueue.cli.common import EXIT_OK, redis_url_option
from workqueue.connection import connect


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def limit() -> None:
    """Per-key limits, enforced where jobs are handed out: a job whose key is at its limit waits,
    off the queue, and starts in order when its key has room. A pattern (domain:*) gives each
    matching key its own limit."""


@limit.command("set")
@click.argument("key")
@click.option("--rate", default=None, metavar="N/s|N/m", help="At most N starts per second (N/s) or minute (N/m).")
@click.option("--concurrency", type=int, default=None, metavar="N", help="At most N jobs of the key at once.")
@redis_url_option
def set_(key: str, rate: str | None, concurrency: int | None, redis_url: str | None) -> int:
    """Set the limit of KEY, or of every key matching a pattern (* ? [...]), replacing its old one."""
    rule = limits.make_rule(key, rate, concurrency)  # bad input: one line, exit 2, nothing written
    connection, _ = connect(redis_url)
    limits.set_rule(connection, rule)
    click.echo(f"limit on {rule.pattern}: {rule.describe()}")
    return EXIT_OK


@limit.command("list")
@redis_url_option
def list_(redis_url: str | None) -> int:
    """Each rule, then each key in use: its rate, slots in use and jobs waiting."""
    connection, _ = connect(redis_url)
    all_rules = limits.rules(connection)
    if not all_rules:
        click.echo("no limits set")
    for rule in all_rules:
        kind = "pattern" if limits.is_pattern(rule.pattern) else "key"
        click.echo(f"{kind:<8} {rule.pattern}: {rule.describe()}")
    states = limits.key_states(connection, time.time())
    if states:
        click.echo(f"{'key':<40} {'rule':<20} {'rate':>8} {'slots':>9} {'waiting':>8}")
    for state in states:
        applied = state.rule
        slots = f"{state.running}/{applied.concurrency}" if applied and applied.concurrency else str(state.running)
        rate = applied.describe_rate() if applied else "-"
        click.echo(f"{state.key:<40} {state.source or 'unlimited':<20} {rate:>8} {slots:>9} {state.waiting:>8}")
    return EXIT_OK


@limit.command("remove")
@click.argument("key")
@redis_url_option
def remove(key: str, redis_url: str | None) -> int:
    """Remove the limit set on KEY (a key or pattern, as given to set)."""
    connection, _ = connect(redis_url)
    rule = limits.remove_rule(connection, key)
    click.echo(f"removed the limit on {rule.pattern} ({rule.describe()})")
    return EXIT_OK
