"""The dashboard and the gateway on production WSGI servers (workqueue/wsgi_server.py): waitress by default, not
Werkzeug's development server; SIGTERM and Ctrl-C stop them cleanly (exit 0, nothing left running); their helper
threads run in the process that answers ``/health``: once with waitress, in each worker with gunicorn."""

from __future__ import annotations

import importlib.util
import signal
import socket
import threading
from collections.abc import Callable

import httpx
import psutil
import pytest

from tests.helpers import Processes, cli_env, free_port, wait_for

SERVERS = {"dashboard_main.py": "sweeper", "gateway_main.py": "callbacks"}


def start(processes: Processes, script: str, redis_url: str, *args: str) -> tuple[object, str]:
    port = free_port()
    process = processes.start(script, "--port", str(port), *args, env=cli_env(REDIS_URL=redis_url))
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: _answers(f"{base}/health"), 30, f"{script} to answer")
    return process, base


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def health(base: str) -> list[tuple[str, bool, int]]:
    answer = httpx.get(f"{base}/health", timeout=5).json()
    return [(h["name"], h["up"], h["restarts"]) for h in answer["helpers"]]


def stopped_cleanly(process, sig: int) -> None:  # type: ignore[no-untyped-def]
    family = psutil.Process(process.pid).children(recursive=True)
    process.send_signal(sig)
    assert process.wait(30) == 0, process.output()
    _gone, alive = psutil.wait_procs(family, timeout=30)
    assert not alive, f"left running: {alive}"
    assert "Traceback" not in process.output()[1]


@pytest.mark.parametrize("script", SERVERS)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_served_by_waitress_and_stopped_cleanly(processes: Processes, redis_url: str, script: str, sig: int) -> None:
    process, base = start(processes, script, redis_url)
    answer = httpx.get(f"{base}/health", timeout=5)
    assert "werkzeug" not in answer.headers.get("server", "").lower()
    assert answer.headers["server"] == "workqueue"  # waitress, named so: no server or version given away
    assert health(base) == [(SERVERS[script], True, 0)]
    stopped_cleanly(process, sig)


@pytest.mark.parametrize("script", SERVERS)
def test_sigterm_under_load_stops_cleanly(processes: Processes, redis_url: str, script: str) -> None:
    """SIGTERM lands while the server's loop handles a request (where waitress swallows an Exception): it still
    stops, after the requests in flight, with exit 0."""
    process, base = start(processes, script, redis_url)
    done = threading.Event()
    answered = [0] * 4

    def hammer(slot: int) -> None:
        with httpx.Client(base_url=base, timeout=10) as http:
            while not done.is_set():
                try:
                    http.get("/health")
                    answered[slot] += 1
                except httpx.HTTPError:
                    return  # the server is gone: what this test waits for

    threads = [threading.Thread(target=hammer, args=(slot,)) for slot in range(len(answered))]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: sum(answered) >= 200, 60, "requests under load")
        stopped_cleanly(process, signal.SIGTERM)
    finally:
        done.set()
        for thread in threads:
            thread.join(30)


@pytest.mark.skipif(importlib.util.find_spec("gunicorn") is None, reason="gunicorn not installed (bench/requirements)")
@pytest.mark.parametrize("script", SERVERS)
def test_gunicorn_workers_each_run_their_helpers(processes: Processes, redis_url: str, script: str) -> None:
    process, base = start(processes, script, redis_url, "--server", "gunicorn")
    wait_for(lambda: len(psutil.Process(process.pid).children()) == 2, 30, "gunicorn's two workers")
    # Whichever worker answers, its helper runs (started after the fork, in that worker), never restarted.
    for _ in range(10):
        assert health(base) == [(SERVERS[script], True, 0)]
    stopped_cleanly(process, signal.SIGTERM)


def test_a_port_in_use_is_one_line(redis_url: str) -> None:
    from tests.helpers import run_cli

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("gateway_main.py", "--port", str(port), env=cli_env(REDIS_URL=redis_url), timeout=30)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: cannot listen on 127.0.0.1:{port}: "
                                                  "Address already in use; choose another --port"]  # fmt: skip


def test_unknown_server_is_a_usage_error(redis_url: str) -> None:
    from tests.helpers import run_cli

    result = run_cli("gateway_main.py", "--server", "nginx", env=cli_env(REDIS_URL=redis_url), timeout=30)
    assert result.returncode == 2 and "--server" in result.stderr


def test_an_answer_leaves_in_one_send(monkeypatch: pytest.MonkeyPatch) -> None:
    """waitress sends what a request's thread writes at once: a small answer went as two sends (its head, then its
    body), two packets and two wake-ups of the client for every enqueue. Now one, head and body, per answer."""

    from waitress.channel import HTTPChannel  # type: ignore[import-untyped]

    sent: list[bytes] = []
    send = HTTPChannel.send

    def counted(self, data, do_close=True):  # type: ignore[no-untyped-def]  # waitress's signature
        sent.append(bytes(data))
        return send(self, data, do_close)

    monkeypatch.setattr(HTTPChannel, "send", counted)  # observes the sends, each still made
    body = b'{"job_ids":["a"]}\n'

    def app(environ, start_response):  # type: ignore[no-untyped-def]
        environ["wsgi.input"].read()
        start_response("201 Created", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    port = free_port()
    statuses: list[int] = []

    def client() -> None:  # two requests on one kept-alive connection
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            wait_for(lambda: _posted(http, statuses), 30, "the server to answer")
            statuses.append(http.post("/jobs", content=b"{}").status_code)

    _serve_while(app, port, client)
    assert statuses == [201, 201]
    answers = [data for data in sent if data.startswith(b"HTTP/1.1 ")]
    assert len(sent) == len(answers) == 2, sent
    assert all(data.endswith(b"\r\n\r\n" + body) for data in answers), sent


def _serve_while(app, port: int, work: Callable[[], object]) -> None:  # type: ignore[no-untyped-def]
    """Serve ``app`` (``wsgi_server.serve``) in this thread while ``work()`` runs in another, which then
    stops it with SIGTERM, once serve()'s own handler is in place (never the test run's)."""
    import os

    from workqueue import wsgi_server

    default = signal.getsignal(signal.SIGTERM)

    def client() -> None:
        try:
            work()
        finally:
            wait_for(lambda: signal.getsignal(signal.SIGTERM) is not default, 30, "serve() to handle SIGTERM")
            os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=client)
    thread.start()
    try:
        wsgi_server.serve(app, "127.0.0.1", port, ())
    finally:
        thread.join(30)


def _posted(http: httpx.Client, statuses: list[int]) -> bool:
    try:
        statuses.append(http.post("/jobs", content=b"{}").status_code)
    except httpx.TransportError:
        return False
    return True


def test_what_start_up_built_is_out_of_the_collectors_reach_while_serving() -> None:
    """The app and the libraries live as long as the process: each full collection walked them all (~60,000
    objects in the gateway, ~0.1 s a time, in the answers of the requests it fell in)."""
    import gc

    frozen: list[int] = []

    def app(environ, start_response):  # type: ignore[no-untyped-def]
        frozen.append(gc.get_freeze_count())
        start_response("200 OK", [("Content-Length", "0")])
        return [b""]

    port = free_port()
    _serve_while(app, port, lambda: wait_for(lambda: _answers(f"http://127.0.0.1:{port}/"), 30, "the server to answer"))
    assert frozen and all(count > 1000 for count in frozen), frozen
    assert gc.get_freeze_count() == 0  # and collected as before once serving ends
