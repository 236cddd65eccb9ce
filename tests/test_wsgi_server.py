"""The dashboard and the gateway on production WSGI servers (workqueue/wsgi_server.py): granian by default, or
waitress, not Werkzeug's development server; SIGTERM and Ctrl-C stop them cleanly (exit 0, nothing left running,
requests in flight answered, up to 5 s); their helper threads run in the process that answers ``/health``: once with
granian (in its one worker) and waitress, in each worker with gunicorn."""

from __future__ import annotations

import importlib.util
import signal
import socket
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest

from tests.helpers import ROOT, Processes, cli_env, free_port, wait_for

SERVERS = {"dashboard_main.py": "sweeper", "gateway_main.py": "callbacks"}
#: The production servers each test runs on: granian is the default (no ``--server``).
PRODUCTION = ["granian", "waitress"]


def server_args(server: str) -> tuple[str, ...]:
    return () if server == "granian" else ("--server", server)


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


@pytest.mark.parametrize("server", PRODUCTION)
@pytest.mark.parametrize("script", SERVERS)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_served_and_stopped_cleanly(processes: Processes, redis_url: str, script: str, sig: int, server: str) -> None:
    process, base = start(processes, script, redis_url, *server_args(server))
    answer = httpx.get(f"{base}/health", timeout=5)
    assert "werkzeug" not in answer.headers.get("server", "").lower()
    assert answer.headers["server"] == "workqueue"  # named so: no server or version given away
    assert health(base) == [(SERVERS[script], True, 0)]
    stopped_cleanly(process, sig)


@pytest.mark.parametrize("script", SERVERS)
def test_granian_is_the_default_and_its_one_worker_runs_the_helpers(
    processes: Processes, redis_url: str, script: str
) -> None:
    """granian's supervising process forks one worker, which serves and runs the helpers: once, never restarted."""
    process, base = start(processes, script, redis_url)
    workers = psutil.Process(process.pid).children()
    assert len(workers) == 1, workers
    for _ in range(10):
        assert health(base) == [(SERVERS[script], True, 0)]
    stopped_cleanly(process, signal.SIGTERM)
    assert not workers[0].is_running()


@pytest.mark.parametrize("server", PRODUCTION)
@pytest.mark.parametrize("script", SERVERS)
def test_sigterm_under_load_stops_cleanly(processes: Processes, redis_url: str, script: str, server: str) -> None:
    """SIGTERM lands while the server handles requests (where waitress's loop swallows an Exception): it still
    stops, after the requests in flight, with exit 0."""
    process, base = start(processes, script, redis_url, *server_args(server))
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


def test_granian_stops_on_sighup_and_its_worker_with_its_supervisor(processes: Processes, redis_url: str) -> None:
    """SIGHUP (a terminal gone) stops it cleanly, where granian would restart its worker; and a supervisor killed
    outright (SIGKILL) takes its worker with it, where the worker would go on serving the port, orphaned."""
    process, _base = start(processes, "gateway_main.py", redis_url)
    stopped_cleanly(process, signal.SIGHUP)

    process, base = start(processes, "gateway_main.py", redis_url)
    (worker,) = psutil.Process(process.pid).children()
    process.kill()
    _gone, alive = psutil.wait_procs([worker], timeout=30)
    assert not alive, f"granian's worker outlived its supervisor: {alive}"
    assert not _answers(f"{base}/health")


@pytest.mark.skipif(importlib.util.find_spec("gunicorn") is None, reason="gunicorn not installed (bench/requirements)")
@pytest.mark.parametrize("script", SERVERS)
def test_gunicorn_workers_each_run_their_helpers(processes: Processes, redis_url: str, script: str) -> None:
    process, base = start(processes, script, redis_url, "--server", "gunicorn")
    wait_for(lambda: len(psutil.Process(process.pid).children()) == 2, 30, "gunicorn's two workers")
    # Whichever worker answers, its helper runs (started after the fork, in that worker), never restarted.
    for _ in range(10):
        assert health(base) == [(SERVERS[script], True, 0)]
    stopped_cleanly(process, signal.SIGTERM)


@pytest.mark.parametrize("server", PRODUCTION)
def test_a_port_in_use_is_one_line(redis_url: str, server: str) -> None:
    from tests.helpers import run_cli

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(
            "gateway_main.py", "--port", str(port), *server_args(server), env=cli_env(REDIS_URL=redis_url), timeout=30
        )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: cannot listen on 127.0.0.1:{port}: "
                                                  "Address already in use; choose another --port"]  # fmt: skip


@pytest.mark.parametrize("script", SERVERS)
def test_a_second_server_on_the_same_port_is_refused(processes: Processes, redis_url: str, script: str) -> None:
    """granian listens with SO_REUSEPORT, which lets a second granian share the port (each taking some of the
    requests) without a word: the second is refused, as any other program's listener on the port is."""
    from tests.helpers import run_cli

    process, base = start(processes, script, redis_url)
    port = base.rsplit(":", 1)[1]
    result = run_cli(script, "--port", port, env=cli_env(REDIS_URL=redis_url), timeout=30)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [f"error: cannot listen on 127.0.0.1:{port}: "
                                                  "Address already in use; choose another --port"]  # fmt: skip
    stopped_cleanly(process, signal.SIGTERM)


#: A WSGI app served by ``wsgi_server.serve`` on the server its command line names: ``/sleep/S`` answers after S
#: seconds (touching ``started`` once it has begun), ``/frozen`` with ``gc.get_freeze_count()``; once serving ends,
#: it prints the freeze count.
APP = """
    import gc, pathlib, sys, time
    sys.path.insert(0, {root!r})
    from workqueue import wsgi_server

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path.startswith("/sleep/"):
            pathlib.Path({started!r}).touch()
            time.sleep(float(path.rsplit("/", 1)[1]))
        body = str(gc.get_freeze_count()).encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    wsgi_server.serve(app, "127.0.0.1", int(sys.argv[1]), (), sys.argv[2])
    print("frozen after", gc.get_freeze_count())
"""


def serve_app(processes: Processes, tmp_path: Path, server: str) -> tuple[object, str, Path]:
    script, started = tmp_path / "app.py", tmp_path / "started"
    script.write_text(textwrap.dedent(APP).format(root=str(ROOT), started=str(started)))
    port = free_port()
    process = processes.start(str(script), str(port), server)
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: _answers(f"{base}/frozen"), 30, f"the app on {server} to answer")
    return process, base, started


@pytest.mark.parametrize("server", PRODUCTION)
def test_a_request_in_flight_is_answered_before_the_stop(processes: Processes, tmp_path: Path, server: str) -> None:
    process, base, started = serve_app(processes, tmp_path, server)
    answers: list[httpx.Response] = []
    client = threading.Thread(target=lambda: answers.append(httpx.get(f"{base}/sleep/2", timeout=30)))
    client.start()
    try:
        wait_for(started.exists, 30, "the request to be in flight")
        stopped_cleanly(process, signal.SIGTERM)
    finally:
        client.join(30)
    assert [(a.status_code, a.headers["server"]) for a in answers] == [(200, "workqueue")]


@pytest.mark.parametrize("server", PRODUCTION)
def test_a_request_that_never_ends_does_not_hold_the_stop(processes: Processes, tmp_path: Path, server: str) -> None:
    """Requests in flight are given 5 s; one still running then is dropped, and the server exits 0."""
    process, base, started = serve_app(processes, tmp_path, server)
    errors: list[Exception] = []

    def stuck() -> None:
        try:
            httpx.get(f"{base}/sleep/600", timeout=60)
        except httpx.HTTPError as exc:
            errors.append(exc)

    client = threading.Thread(target=stuck)
    client.start()
    try:
        wait_for(started.exists, 30, "the request to be in flight")
        stopped_cleanly(process, signal.SIGTERM)  # waits up to 30 s for exit 0
    finally:
        client.join(60)
    assert len(errors) == 1, errors


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
        wsgi_server.serve(app, "127.0.0.1", port, (), "waitress")
    finally:
        thread.join(30)


def _posted(http: httpx.Client, statuses: list[int]) -> bool:
    try:
        statuses.append(http.post("/jobs", content=b"{}").status_code)
    except httpx.TransportError:
        return False
    return True


@pytest.mark.parametrize("server", PRODUCTION)
def test_what_start_up_built_is_out_of_the_collectors_reach_while_serving(
    processes: Processes, tmp_path: Path, server: str
) -> None:
    """The app and the libraries live as long as the process: each full collection walked them all (~60,000
    objects in the gateway, ~0.1 s a time, in the answers of the requests it fell in). granian's worker, forked
    after the freeze, inherits it."""
    process, base, _started = serve_app(processes, tmp_path, server)
    frozen = [int(httpx.get(f"{base}/frozen", timeout=10).text) for _ in range(3)]
    assert all(count > 1000 for count in frozen), frozen
    stopped_cleanly(process, signal.SIGTERM)
    assert process.output()[0].splitlines()[-1] == "frozen after 0"  # and collected as before once serving ends


def test_granian_is_handed_an_answer_of_known_length_whole() -> None:
    """granian walks any iterable but a list chunk by chunk, from Rust back into Python (Flask answers with such an
    iterable): an answer whose length is given is handed over whole, in a list, and the app's iterable closed; one of
    no given length, or longer than ``WHOLE``, is passed through as it is. Every answer is named ``workqueue``."""
    from workqueue import wsgi_server

    closed: list[bytes] = []

    class Answer:
        def __init__(self, chunks: list[bytes]) -> None:
            self.chunks = chunks

        def __iter__(self):  # type: ignore[no-untyped-def]
            return iter(self.chunks)

        def close(self) -> None:
            closed.append(b"".join(self.chunks))

    def served(headers: list[tuple[str, str]], chunks: list[bytes]) -> tuple[object, list[tuple[str, str]]]:
        def app(environ, start_response):  # type: ignore[no-untyped-def]
            start_response("200 OK", headers)
            return Answer(chunks)

        given: list[list[tuple[str, str]]] = []
        answer = wsgi_server._for_granian(app)({}, lambda status, headers, exc_info=None: given.append(headers))
        return answer, given[0]

    answer, headers = served([("Content-Length", "5")], [b"ab", b"cde"])
    assert answer == [b"abcde"] and closed == [b"abcde"]
    assert headers == [("Content-Length", "5"), ("Server", "workqueue")]
    for headers_given in ([], [("Content-Length", str(wsgi_server.WHOLE + 1))]):
        answer, headers = served(headers_given, [b"ab"])
        assert isinstance(answer, Answer) and headers == [*headers_given, ("Server", "workqueue")]
    assert closed == [b"abcde"]  # the ones passed through are granian's to close
