"""``dashboard_main.py``: the dashboard on http://127.0.0.1:9181."""

from __future__ import annotations

import click

from workqueue import recovery, webguard
from workqueue.bind_address import url_host
from workqueue.cli.common import EXIT_OK, listen_options, redis_url_option, serve, server_option
from workqueue.connection import connect
from workqueue.dashboard import create_app
from workqueue.dashboard.security import (
    PASSWORD_ENV,
    USERNAME_ENV,
    Credentials,
    check_bind,
)
from workqueue.settings import ALLOWED_HOSTS_ENV, DASHBOARD_HOST, DASHBOARD_PORT, SECURE_COOKIES_ENV, SWEEP_INTERVAL
from workqueue.supervision import Supervisor


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@listen_options(DASHBOARD_PORT, DASHBOARD_HOST, "credentials")
@click.option(
    "--username",
    envvar=USERNAME_ENV,
    default=None,
    show_envvar=True,
    help="With --password: HTTP Basic credentials every request must carry.",
)
@click.option(
    "--password",
    envvar=PASSWORD_ENV,
    default=None,
    show_envvar=True,
    help="Prefer the environment variable: a flag shows in the process list.",
)
@click.option("--read-only", is_flag=True, help="Show everything, change nothing: no action is offered or accepted.")
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    metavar="NAME",
    help=f"A host name browsers use to reach it, besides the bound address (repeatable; "
    f"also {ALLOWED_HOSTS_ENV}, comma-separated). Any other Host header is refused.",
)
@click.option(
    "--secure-cookies",
    is_flag=True,
    help=f"Send cookies over HTTPS only: behind a TLS proxy (also {SECURE_COOKIES_ENV}=1).",
)
@redis_url_option
@server_option
def main(
    port: int,
    bind: str,
    username: str | None,
    password: str | None,
    read_only: bool,
    allowed_hosts: tuple[str, ...],
    secure_cookies: bool,
    redis_url: str | None,
    server: str,
) -> int:
    """Serve the dashboard: rq-dashboard, live work, history, controls and /metrics."""
    credentials = Credentials.resolve(username, password)
    check_bind(bind, credentials)
    guard = webguard.Guard.for_bind(
        bind, webguard.hosts_from_env(allowed_hosts), webguard.secure_cookies_from_env(secure_cookies)
    )
    connection, target = connect(redis_url)
    # Dead workers' jobs go back (and the backlog is sampled) even with no consumer running.
    helpers = Supervisor()
    helpers.add("sweeper", recovery.sweep_loop(connection, SWEEP_INTERVAL))
    app = create_app(target.url, credentials=credentials, read_only=read_only, guard=guard, helpers=helpers)
    host = url_host(bind)
    notes = ", read-only" * read_only + (", login required" if credentials else "")
    click.echo(f"dashboard on http://{host}:{port}/ ({target.display}{notes}); Ctrl-C stops it")
    serve(app, bind, port, helpers.start, server=server)
    return EXIT_OK
