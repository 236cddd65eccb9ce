"""``dashboard_main.py``: the dashboard on http://127.0.0.1:9181."""

from __future__ import annotations

from typing import Optional

import click

from workqueue import recovery
from workqueue.cli.common import EXIT_OK, listen_options, redis_url_option, serve
from workqueue.connection import connect
from workqueue.dashboard import create_app
from workqueue.dashboard.security import (
    PASSWORD_ENV,
    USERNAME_ENV,
    Credentials,
    check_bind,
)
from workqueue.listening import url_host
from workqueue.settings import DASHBOARD_HOST, DASHBOARD_PORT, SWEEP_INTERVAL


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@listen_options(DASHBOARD_PORT, DASHBOARD_HOST, "credentials")
@click.option("--username", envvar=USERNAME_ENV, default=None, show_envvar=True,
              help="With --password: HTTP Basic credentials every request must carry.")
@click.option("--password", envvar=PASSWORD_ENV, default=None, show_envvar=True,
              help="Prefer the environment variable: a flag shows in the process list.")
@click.option("--read-only", is_flag=True, help="Show everything, change nothing: no action is offered or accepted.")
@redis_url_option
def main(port: int, bind: str, username: Optional[str], password: Optional[str], read_only: bool,
         redis_url: Optional[str]) -> int:
    """Serve the dashboard: rq-dashboard, live work, history, controls and /metrics."""
    credentials = Credentials.resolve(username, password)
    check_bind(bind, credentials)
    connection, target = connect(redis_url)
    app = create_app(target.url, credentials=credentials, read_only=read_only)
    host = url_host(bind)
    notes = ", read-only" * read_only + (", login required" if credentials else "")
    click.echo(f"dashboard on http://{host}:{port}/ ({target.display}{notes}); Ctrl-C stops it")
    # Dead workers' jobs go back (and the backlog is sampled) even with no consumer running.
    serve(app, bind, port, lambda stop: recovery.start_sweeper(connection, SWEEP_INTERVAL, stop))
    return EXIT_OK
