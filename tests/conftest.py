"""Fixtures: a real redis-server (the bundled binary) on a free loopback port, local HTTP pages,
and the long-running commands a test starts, always stopped at its end. The plain helpers they
are built from (and that tests import) are in tests/helpers.py."""

from __future__ import annotations

import http.server
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
