"""``gateway_main.py``: the HTTP gateway on http://127.0.0.1:8000."""

from __future__ import annotations

import click

from workqueue import network, webguard
from workqueue.bind_address import check_bind, url_host
from workqueue.cli.common import EXIT_OK, listen_options, redis_url_option, serve, server_option
from workqueue.connection import connect
from workqueue.gateway import create_app, delivery
from workqueue.settings import ALLOWED_HOSTS_ENV, GATEWAY_HOST, GATEWAY_PORT, SECRET_MIN, TOKEN_ENV


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@listen_options(GATEWAY_PORT, GATEWAY_HOST, "a token")
@click.option(
    "--token",
    envvar=TOKEN_ENV,
    default=None,
    show_envvar=True,
    help="Bearer token every request must carry (prefer the environment variable).",
)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    metavar="NAME",
    help=f"A host name clients use to reach it, besides the bound address (repeatable; "
    f"also {ALLOWED_HOSTS_ENV}, comma-separated). Any other Host header is refused.",
)
@redis_url_option
@server_option
def main(
    port: int, bind: str, token: str | None, allowed_hosts: tuple[str, ...], redis_url: str | None, server: str
) -> int:
    """Serve the JSON API (OpenAPI at /openapi.json) and deliver results to callback URLs."""
    if token is not None and len(token) < SECRET_MIN:
        raise click.BadParameter(f"use at least {SECRET_MIN} characters", param_hint="'--token'")
    check_bind(
        bind,
        token is not None,
        "enqueue and cancel tasks",
        f"set {TOKEN_ENV} (or --token) to a secret of at least {SECRET_MIN} characters",
    )
    policy = network.NetworkPolicy.from_env()
    guard = webguard.Guard.for_bind(bind, webguard.hosts_from_env(allowed_hosts))
    connection, target = connect(redis_url)
    helpers = delivery.supervised(connection, policy)
    app = create_app(connection, token=token, helpers=helpers, policy=policy, guard=guard)
    notes = ", token required" if token else ""
    click.echo(
        f"gateway on http://{url_host(bind)}:{port}/ ({target.display}{notes}); API at /openapi.json; Ctrl-C stops it"
    )
    serve(app, bind, port, helpers.start, server=server)
    return EXIT_OK
