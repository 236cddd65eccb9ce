"""The production WSGI servers that serve the dashboard and the gateway, and the helper threads beside them.

``granian`` (the default) does HTTP and the sockets in Rust and calls the app from its own Python threads. It runs a
supervising process and one forked worker that serves: the helper threads (the gateway's callback delivery, the
dashboard's sweeper) start once, in that worker, so ``/health`` reports them from the process that answers it.
``waitress`` is one pure-Python process with a pool of request threads; the helpers start beside it.
``gunicorn`` pre-forks worker processes (``gthread``): each worker starts its own helpers after the fork (threads
never survive a fork, so starting them in the master would leave every worker's ``/health`` showing them down), so
it runs one set of helpers per worker. ``werkzeug`` is Flask's development server, kept as the baseline of
``bench/servers.py``. README "Dashboard and gateway servers" has the figures that chose granian.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import signal
import socket
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from workqueue.errors import BadInput, WorkqueueError

log = logging.getLogger(__name__)

#: The servers ``--server`` accepts, the default first.
SERVERS = ("granian", "waitress", "gunicorn", "werkzeug")
#: Request threads of waitress, and of each gunicorn worker.
THREADS = 8
#: granian's Python threads (its HTTP and I/O run in Rust): requests run in at most this many at once. Each more
#: thread costs GIL hand-offs between them (README "Dashboard and gateway servers"); two keep one request that
#: waits (a cancel waits up to 5 s for its job to stop) from holding up every other.
GRANIAN_THREADS = 2
#: Seconds granian gives the requests in flight when asked to stop, as waitress does.
GRACE = 5
#: The ``Server`` header granian's answers carry (waitress's ``ident``): no server name or version given away.
SERVER_HEADER = ("Server", "workqueue")
#: The longest answer (its Content-Length, in bytes) granian is handed whole rather than as an iterable.
WHOLE = 1 << 20
#: gunicorn's worker processes (this machine's two cores).
GUNICORN_WORKERS = 2

Starter = Callable[[threading.Event], object]


class _Stop(KeyboardInterrupt):
    """Raised by the SIGTERM handler in the main thread, so waitress's loop ends as on Ctrl-C (its loop lets
    KeyboardInterrupt through, where it would swallow an Exception raised inside a channel's handler)."""


def serve(app: Any, bind: str, port: int, helpers: tuple[Starter, ...], server: str = SERVERS[0]) -> None:
    """Serve ``app`` on ``server`` until Ctrl-C or SIGTERM, with ``helpers`` (each started with an event
    that is set when serving ends) started once per process that serves requests."""
    if server not in SERVERS:
        raise BadInput(f"unknown server {server!r}; use one of: {', '.join(SERVERS)}")
    # What start-up built (the app, its document, the libraries: ~60,000 objects) lives as long as the
    # process: out of the collector's reach, each full collection no longer walks it (those took ~0.1 s
    # each, a few times a minute under load, in the gateway's answers). granian's worker inherits it in the fork.
    gc.freeze()
    servers = {"granian": _granian, "waitress": _waitress, "gunicorn": _gunicorn, "werkzeug": _werkzeug}
    try:
        servers[server](app, bind, port, helpers)
    finally:
        gc.unfreeze()  # a caller that goes on (a test) collects its objects as before


def _start(helpers: tuple[Starter, ...]) -> threading.Event:
    stop = threading.Event()
    for start in helpers:
        start(stop)
    return stop


def _granian(app: Any, bind: str, port: int, helpers: tuple[Starter, ...]) -> None:
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces
    from granian.log import LogLevels

    # The one private name we use: granian's own WSGI worker, wrapped so that the helpers start in it.
    # granian is pinned (requirements.txt); a release without it is refused here, not half-served.
    if not callable(getattr(Granian, "_spawn_wsgi_worker", None)):
        raise WorkqueueError("this granian has no WSGI worker to wrap (granian==2.8.7 expected); use --server waitress")
    address = _listen_address(bind, port)
    # granian forks its worker, which inherits the app built here (and what gc.freeze() froze); under "spawn"
    # (Python 3.14's default is "forkserver", which granian turns into "spawn") it would have to pickle it.
    if multiprocessing.get_start_method(allow_none=True) is None:
        multiprocessing.set_start_method("fork")
    if multiprocessing.get_start_method() != "fork":
        raise WorkqueueError("granian needs multiprocessing's fork start method here; use --server waitress")
    parent = os.getpid()

    def worker(*args: Any) -> None:
        """granian's WSGI worker, in the forked process that serves: the helpers run there, once, and end with it."""
        _die_with(parent)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the parent's to handle: it stops this one gracefully
        stop = _start(helpers)
        try:
            Granian._spawn_wsgi_worker(*args)
        finally:
            stop.set()

    server = Granian(
        "workqueue",
        address=address,
        port=port,
        interface=Interfaces.WSGI,
        workers=1,
        blocking_threads=GRANIAN_THREADS,
        http=HTTPModes.http1,
        websockets=False,
        workers_kill_timeout=GRACE,
        log_level=LogLevels.warning,
    )
    # SIGHUP (a terminal gone) stops it as Ctrl-C does, where granian would restart its worker.
    server.signal_handler_reload = server.signal_handler_interrupt  # type: ignore[method-assign]
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        server.serve(spawn_target=worker, target_loader=lambda _target: _for_granian(app))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _listen_address(bind: str, port: int) -> str:
    """The one address granian listens on for ``bind`` (a name's first IPv4 address, else its first), checked free.
    granian binds with SO_REUSEPORT: a second server on a port in use would share it without a word, where the
    others say the address is in use. A plain bind first says so (a listener on the port refuses it)."""
    try:
        infos = socket.getaddrinfo(bind, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, where = min(infos, key=lambda info: info[0] != socket.AF_INET)
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAITs are no use
            probe.bind(where)
    except OSError as exc:
        raise WorkqueueError(f"cannot listen on {bind}:{port}: {exc.strerror or exc}; choose another --port") from None
    return str(where[0])


def _die_with(parent: int) -> None:
    """Have this (forked) process told to stop (SIGTERM) when ``parent`` dies, even by SIGKILL: granian's worker
    would otherwise go on serving, orphaned, on the port."""
    from workqueue.worker.process import die_with_parent

    die_with_parent(signal.SIGTERM)
    if os.getppid() != parent:  # it died before that took hold
        os.kill(os.getpid(), signal.SIGTERM)


def _for_granian(app: Any) -> Any:
    """``app`` as granian serves it best: an answer whose length it gives, up to ``WHOLE`` bytes, handed over in a
    list (granian sends a list's bytes in one call; any other iterable, as Flask's answers are, it walks chunk by
    chunk from Rust back into Python: ~9% of the gateway worker's samples per enqueue, ~35 us of CPU); and its
    answers carrying ``Server: workqueue`` (granian's own would say ``granian``)."""

    def served(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        length = [WHOLE + 1]

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            for name, value in headers:
                if name.lower() == "content-length":
                    length[0] = int(value)
            return start_response(status, [*headers, SERVER_HEADER], exc_info)

        answer = app(environ, start)
        if isinstance(answer, list) or length[0] > WHOLE:
            return answer
        try:
            return [b"".join(answer)]
        finally:
            close = getattr(answer, "close", None)
            if close is not None:
                close()

    return served


def _waitress(app: Any, bind: str, port: int, helpers: tuple[Starter, ...]) -> None:
    from waitress.server import BaseWSGIServer, create_server  # type: ignore[import-untyped]  # no stubs shipped

    sockets: dict[int, Any] = {}
    try:
        server = create_server(app, map=sockets, host=bind, port=port, threads=THREADS, ident="workqueue")
    except OSError as exc:
        raise WorkqueueError(f"cannot listen on {bind}:{port}: {exc.strerror or exc}; choose another --port") from None
    channel = _one_send_channel()
    for listener in sockets.values():  # one per address listened on (the map also holds waitress's trigger)
        if isinstance(listener, BaseWSGIServer):
            listener.channel_class = channel

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise _Stop

    previous = signal.signal(signal.SIGTERM, on_term)
    stop = _start(helpers)
    try:
        server.run()  # returns on KeyboardInterrupt (Ctrl-C, or SIGTERM's _Stop) once requests in flight end
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop.set()
        server.close()


def _one_send_channel() -> type:
    """waitress's connection class, but each response's head leaves in one send with its body's first
    chunk. waitress sends whatever a request's thread writes at once (``send_bytes`` 1): the head, then
    the body, two sends and two packets for every small JSON answer, and a client that reads the head
    before its body is woken twice. A larger ``send_bytes`` would leave the answer to the main loop
    (one more thread hand-off before it leaves); this keeps it in the request's thread."""
    from waitress.channel import HTTPChannel  # type: ignore[import-untyped]  # no stubs shipped
    from waitress.task import WSGITask  # type: ignore[import-untyped]

    class OneSendTask(WSGITask):
        def write(self, data: bytes) -> None:
            if self.wrote_header or not data:
                super().write(data)
                return
            channel = self.channel
            held: list[bytes] = []
            channel.write_soon = held.append  # the head and the chunk, held: only this task writes here now
            try:
                super().write(data)
            finally:
                del channel.write_soon  # back to the class's
            channel.write_soon(b"".join(held))

    class OneSendChannel(HTTPChannel):
        task_class = OneSendTask

    return OneSendChannel


def _gunicorn(app: Any, bind: str, port: int, helpers: tuple[Starter, ...]) -> None:
    try:
        from gunicorn.app.base import BaseApplication  # type: ignore[import-untyped]  # no stubs shipped
    except ImportError:
        raise WorkqueueError("gunicorn is not installed: pip install -r bench/requirements.txt") from None

    stops: list[threading.Event] = []

    class Application(BaseApplication):
        def load_config(self) -> None:
            host = f"[{bind}]" if ":" in bind else bind
            settings = {
                "bind": f"{host}:{port}",
                "workers": GUNICORN_WORKERS,
                "worker_class": "gthread",
                "threads": THREADS,
                "control_socket_disable": True,
                "accesslog": None,
                "loglevel": "warning",
                # Each worker process: its own helpers, after the fork, stopped as it exits.
                "post_worker_init": lambda worker: stops.append(_start(helpers)),
                "worker_exit": lambda arbiter, worker: _set_all(stops),
            }
            for key, value in settings.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return app

    Application().run()


def _set_all(events: list[threading.Event]) -> None:
    for event in events:
        event.set()


def _werkzeug(app: Any, bind: str, port: int, helpers: tuple[Starter, ...]) -> None:
    from werkzeug.serving import run_simple

    stop = _start(helpers)
    try:
        run_simple(bind, port, app, threaded=True)
    finally:
        stop.set()
