"""What every command shares: the Redis option, click types built on the catalogue's validation,
when to prompt, and turning errors into one line and an exit code."""

from __future__ import annotations

import re
import sys
import threading
from collections.abc import Callable
from typing import Any, NoReturn

import click
import redis

import task_def
from workqueue import logs, outage, rq_compat, wsgi_server
from workqueue.errors import BadInput, WorkqueueError
from workqueue.jobs import check_queue_name

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

redis_url_option = click.option(
    "--redis-url",
    metavar="URL",
    default=None,
    help="Redis to use (else $REDIS_URL, else the embedded server on 127.0.0.1:6379).",
)


def can_prompt() -> bool:
    """Prompt only at a terminal: scripts get a usage error instead of a hang."""
    return sys.stdin.isatty()


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def run(command: click.Command, args: list[str] | None = None) -> NoReturn:
    """Run a click command; every error becomes one line on stderr and its exit code. Every command
    reads jobs through RQ: what workqueue installs into RQ (``rq_compat.install``) is installed here."""
    logs.setup(verbose=False)
    rq_compat.install()
    try:
        code = command.main(args=args, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("", err=True)
        fail("aborted", EXIT_INTERRUPTED)
    except click.UsageError as exc:
        fail(f"{exc.format_message()} (see --help)", EXIT_USAGE)
    except click.ClickException as exc:
        fail(exc.format_message(), exc.exit_code)
    except task_def.TaskDefError as exc:
        fail(str(exc), EXIT_USAGE)
    except WorkqueueError as exc:
        fail(str(exc), exc.exit_code)
    except redis.RedisError as exc:  # one line, never a traceback: what Redis did, and that it failed
        fail(f"{outage.describe(exc)}; the command did not complete", EXIT_FAILED)
    except KeyboardInterrupt:
        click.echo("", err=True)
        fail("interrupted", EXIT_INTERRUPTED)
    sys.exit(code or EXIT_OK)


def _bad(self: click.ParamType, exc: Exception, param: click.Parameter | None, ctx: click.Context | None) -> NoReturn:
    self.fail(str(exc), param, ctx)


class QueueName(click.ParamType):
    name = "queue"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return check_queue_name(value)
        except BadInput as exc:
            _bad(self, exc, param, ctx)


class QueueList(click.ParamType):
    """Queue names separated by commas or spaces, as typed at a prompt."""

    name = "queues"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[str]:
        if isinstance(value, list):
            return value
        names = [n for n in re.split(r"[,\s]+", str(value)) if n]
        if not names:
            self.fail("give at least one queue name", param, ctx)
        try:
            return list(dict.fromkeys(check_queue_name(n) for n in names))
        except BadInput as exc:
            _bad(self, exc, param, ctx)


class TaskParam(click.ParamType):
    """A catalogue parameter as a click type, so a prompt re-asks with the catalogue's message."""

    def __init__(self, param: task_def.Param) -> None:
        self.param = param
        self.name = param.type.__name__

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return self.param.parse(value)
        except task_def.InvalidParams as exc:
            _bad(self, exc, param, ctx)


def echo_status(line: str, *, live: bool, last: list[str]) -> None:
    """Show a status line: rewritten in place at a terminal, printed when it changes otherwise."""
    if live:
        click.echo(f"\r\x1b[K{line}", nl=False)
    elif not last or last[0] != line:
        click.echo(line)
    last[:] = [line]


def listen_options(port: int, host: str, protected_by: str) -> Callable[[Callable], Callable]:
    """A server command's ``--port`` and ``--bind`` (loopback by default; beyond it only with
    ``protected_by``)."""

    def decorate(command: Callable) -> Callable:
        command = click.option(
            "--bind",
            default=host,
            show_default=True,
            help=f"Address to listen on; beyond loopback only with {protected_by}.",
        )(command)
        return click.option("--port", type=click.IntRange(1, 65535), default=port, show_default=True)(command)

    return decorate


def server_option(command: Callable) -> Callable:
    """A server command's ``--server``: the WSGI server that serves it (workqueue/wsgi_server.py)."""
    return click.option(
        "--server",
        type=click.Choice(wsgi_server.SERVERS),
        default=wsgi_server.SERVERS[0],
        show_default=True,
        help="WSGI server: waitress (one process, threads), gunicorn (pre-forked workers, helpers in each) "
        "or werkzeug (the development server, for comparison).",
    )(command)


def serve(
    app: Any, bind: str, port: int, *helpers: Callable[[threading.Event], object], server: str = wsgi_server.SERVERS[0]
) -> None:
    """Serve ``app`` on a production WSGI server until Ctrl-C or SIGTERM, with helper threads (each started
    with an event) that stop with it: started once in each process that serves requests."""
    wsgi_server.serve(app, bind, port, helpers, server)
