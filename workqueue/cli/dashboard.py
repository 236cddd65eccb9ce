"""``dashboard_main.py``: the dashboard on http://127.0.0.1:9181."""

from __future__ import annotations

import threading
from typing import Optional

import click
from werkzeug.serving import run_simple

from workqueue import recovery
from workqueue.cli.common import EXIT_OK, redis_url_option
from workqueue.connection import connect
from workqueue.dashboard import create_app
from workqueue.settings import DASHBOARD_HOST, DASHBOARD_PORT, SWEEP_INTERVAL


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--port", type=click.IntRange(1, 65535), default=DASHBOARD_PORT, show_default=True)
@click.option("--bind", default=DASHBOARD_HOST, show_default=True, help="Address to listen on.")
@redis_url_option
def main(port: int, bind: str, redis_url: Optional[str]) -> int:
    """Serve the dashboard (rq-dashboard, reading jobs as JSON)."""
    connection, target = connect(redis_url)
    click.echo(f"dashboard on http://{bind}:{port}/ ({target.display}); Ctrl-C stops it")
    stop = threading.Event()
    recovery.start_sweeper(connection, SWEEP_INTERVAL, stop)  # dead workers' jobs go back even with no consumer
    try:
        run_simple(bind, port, create_app(target.url), threaded=True)
    finally:
        stop.set()
    return EXIT_OK
