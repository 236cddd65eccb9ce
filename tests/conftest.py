"""Fixtures: a real redis-server (the bundled binary) on a free loopback port, local HTTP pages,
and the long-running commands a test starts, always stopped at its end. The plain helpers they
are built from (and that tests import) are in tests/helpers.py."""

from __future__ import annotations

import http.server
import signal
import threading
from collections.abc import Iterator

import pytest
import redis

from tests.helpers import PageHandler, Processes, RedisServer, serving


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.wait_ready()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """A clean database on the session's server; REDIS_URL points at it for in-process code."""
    conn = redis.Redis.from_url(redis_server.url)
    conn.flushall()
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    return redis_server.url


@pytest.fixture
def conn(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Each phase's report kept on the test (``item.failed``), for the fixtures' teardown."""
    report = yield
    if report.failed:
        item.failed = True  # type: ignore[attr-defined]
    return report


@pytest.fixture
def processes(request: pytest.FixtureRequest) -> Iterator[Processes]:
    procs = Processes()
    yield procs
    try:
        procs.stop_all()
    finally:
        if getattr(request.node, "failed", False):  # their own words in the report: a flake seen once has a log
            procs.show_output()


_STOPS = {signal.SIGINT, signal.SIGTERM}


def pytest_configure(config: pytest.Config) -> None:
    """Tests send Ctrl-C (SIGINT) to the commands they start, as a user at a terminal would. A shell
    that starts pytest in the background without job control (``make test &`` in a script) makes it
    ignore SIGINT, and every process it starts would inherit that: its default is given back here."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def stop_signals_left_as_found() -> Iterator[None]:
    """Each test leaves pytest's stop signals as it found them. A process inherits its starter's
    blocked and ignored signals: after a test that left SIGINT or SIGTERM blocked, every process
    a later test starts would ignore Ctrl-C, and a scheduler its worker's death (PDEATHSIG)."""
    yield
    if threading.current_thread() is not threading.main_thread():
        return
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, []) & _STOPS
    ignored = {sig for sig in _STOPS if signal.getsignal(sig) is signal.SIG_IGN}
    if blocked:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)
    for sig in ignored:
        signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
    assert not blocked and not ignored, f"the test left stop signals blocked {blocked}, ignored {ignored}"


@pytest.fixture(scope="session")
def http_server() -> Iterator[str]:
    with serving(http.server.ThreadingHTTPServer(("127.0.0.1", 0), PageHandler)) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def sends(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """What this process sends to Redis, one entry per write (a round trip), as it goes."""
    seen: list[bytes] = []
    original = redis.connection.AbstractConnection.send_packed_command

    def send(self, command, check_health=True):  # type: ignore[no-untyped-def]
        parts = [command] if isinstance(command, bytes | str) else list(command)
        seen.append(bytes(parts[0])[:40] if parts else b"")
        return original(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", send)
    return seen
