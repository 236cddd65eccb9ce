"""Logins and requests, for the dashboard and the gateway alike (``workqueue.webguard``): one minimum
for both secrets, a per-client backoff on failed logins, the Host allow-list (DNS rebinding), the
Origin check on state changes, JSON bodies only on the gateway, and cookies a script cannot read
(``Secure`` behind TLS). Against real processes, or the Flask test client over a real Redis."""

from __future__ import annotations

import http.client
import re
from base64 import b64encode

import pytest
import redis

from tests.helpers import Processes, answers, cli_env, client_for, enqueue_jobs, free_port, run_cli, token, wait_for
from workqueue import webguard
from workqueue.dashboard.security import Credentials
from workqueue.gateway import create_app as create_gateway
from workqueue.settings import SECRET_MIN

PASSWORD = "a-password-of-20-ch"
TOKEN = "t" * SECRET_MIN


def request(port: int, method: str, path: str, headers: dict | None = None, body: bytes | None = None):
    """A raw HTTP request, so the Host header is exactly the one given."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        connection.close()


def basic(password: str, user: str = "admin") -> dict:
    return {"Authorization": "Basic " + b64encode(f"{user}:{password}".encode()).decode()}


# (a) One minimum for both secrets -----------------------------------------------------------------


@pytest.mark.parametrize(
    "script, env",
    [
        ("dashboard_main.py", {"WORKQUEUE_DASHBOARD_USERNAME": "admin", "WORKQUEUE_DASHBOARD_PASSWORD": "x"}),
        (
            "dashboard_main.py",
            {"WORKQUEUE_DASHBOARD_USERNAME": "admin", "WORKQUEUE_DASHBOARD_PASSWORD": "p" * (SECRET_MIN - 1)},
        ),
        ("gateway_main.py", {"WORKQUEUE_GATEWAY_TOKEN": "t" * (SECRET_MIN - 1)}),
    ],
)
def test_a_short_secret_for_a_public_bind_is_refused_in_one_line(redis_url: str, script: str, env: dict) -> None:
    result = run_cli(
        script, "--bind", "0.0.0.0", "--port", str(free_port()), env=cli_env(REDIS_URL=redis_url, **env), timeout=30
    )
    assert result.returncode == 2, result.stderr
    assert f"at least {SECRET_MIN}" in result.stderr and len(result.stderr.strip().splitlines()) == 1


# (b) Backoff on failed logins ----------------------------------------------------------------------


def test_backoff_doubles_is_bounded_and_forgets_on_success() -> None:
    now = [0.0]
    backoff = webguard.Backoff(free=3, first=1.0, cap=8.0, max_clients=2, clock=lambda: now[0])
    waits = []
    for _ in range(8):
        backoff.failed("a")
        waits.append(backoff.wait("a"))
    assert waits == [0, 0, 1, 2, 4, 8, 8, 8]
    backoff.succeeded("a")
    assert backoff.wait("a") == 0
    for client in ("b", "c", "d"):  # memory bounded: the oldest is forgotten
        for _ in range(4):
            backoff.failed(client)
    assert len(backoff._clients) == 2 and backoff.wait("b") == 0 and backoff.wait("d") == 2


def test_dashboard_slows_down_failed_logins(conn: redis.Redis, redis_url: str) -> None:
    client = client_for(redis_url, credentials=Credentials("admin", PASSWORD))
    assert client.get("/api/live").status_code == 401  # no credentials yet: not a failure
    statuses = [client.get("/api/live", headers=basic("wrong")).status_code for _ in range(6)]
    assert statuses == [401] * 5 + [429]
    refused = client.get("/api/live", headers={**basic(PASSWORD), "Accept": "application/json"})
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1  # even the right one, for now
    assert "too many failed logins" in refused.json["error"]
    other = client.get("/api/live", headers=basic(PASSWORD), environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert other.status_code == 200  # per client


def test_gateway_slows_down_failed_tokens(conn: redis.Redis) -> None:
    api = create_gateway(conn, token=TOKEN).test_client()
    bad = {"Authorization": "Bearer " + "x" * SECRET_MIN}
    assert [api.get("/tasks", headers=bad).status_code for _ in range(6)] == [401] * 5 + [429]
    refused = api.get("/tasks", headers={"Authorization": f"Bearer {TOKEN}"})
    assert refused.status_code == 429 and refused.headers["Retry-After"] and refused.json["error"]


# (c) Allowed hosts ---------------------------------------------------------------------------------


def test_host_policy_for_each_kind_of_bind() -> None:
    loopback = webguard.HostPolicy.for_bind("127.0.0.1")
    assert all(loopback.allows(h) for h in ("127.0.0.1:9181", "localhost:9181", "[::1]:9181", "LOCALHOST"))
    assert not loopback.allows("evil.example:9181") and not loopback.allows("10.0.0.1")
    public = webguard.HostPolicy.for_bind("192.0.2.7", ["dash.example"])
    assert public.allows("192.0.2.7:80") and public.allows("dash.example") and not public.allows("localhost")
    assert not public.allows("evil.example")
    wildcard = webguard.HostPolicy.for_bind("0.0.0.0")
    assert wildcard.allows("198.51.100.4:8000") and wildcard.allows("[2001:db8::1]") and wildcard.allows("localhost")
    assert not wildcard.allows("rebound.evil.example")


def test_dashboard_answers_only_its_hosts(conn: redis.Redis, processes: Processes, redis_url: str) -> None:
    port = free_port()
    env = cli_env(REDIS_URL=redis_url, WORKQUEUE_ALLOWED_HOSTS="env.example, other.example")
    processes.start("dashboard_main.py", "--port", str(port), "--allowed-host", "flag.example", env=env)
    wait_for(lambda: answers(f"http://127.0.0.1:{port}/"), 20, "the dashboard to answer")
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "flag.example", f"env.example:{port}", "other.example"):
        assert request(port, "GET", "/api/live", {"Host": host})[0] == 200, host
    status, _, body = request(
        port, "GET", "/api/live", {"Host": f"rebound.evil.example:{port}", "Accept": "application/json"}
    )
    assert status == 400 and b"does not answer to the host 'rebound.evil.example'" in body


def test_gateway_answers_only_its_hosts(conn: redis.Redis, processes: Processes, redis_url: str) -> None:
    port = free_port()
    processes.start(
        "gateway_main.py", "--port", str(port), "--allowed-host", "api.example", env=cli_env(REDIS_URL=redis_url)
    )
    wait_for(lambda: answers(f"http://127.0.0.1:{port}/tasks"), 20, "the gateway to answer")
    assert request(port, "GET", "/tasks", {"Host": "api.example"})[0] == 200
    status, _, body = request(port, "GET", "/tasks", {"Host": "evil.example"})
    assert status == 400 and b"evil.example" in body


# (d) JSON bodies only, (e) Origin ---------------------------------------------------------------


def test_gateway_takes_json_bodies_only_and_no_state_change_from_another_origin(conn: redis.Redis) -> None:
    api = create_gateway(conn).test_client()
    body = b'{"task": "primes", "params": {"n": 100}}'
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        reply = api.post("/jobs", data=body, content_type=content_type)
        assert reply.status_code == 415 and "Content-Type: application/json" in reply.json["error"], content_type
    assert not conn.keys("rq:job:*")
    refused = api.post("/jobs", data=body, content_type="application/json", headers={"Origin": "http://evil.example"})
    assert refused.status_code == 403 and "another site" in refused.json["error"]
    assert api.post("/jobs", data=body, content_type="application/json", headers={"Origin": "null"}).status_code == 403
    assert api.delete("/jobs/x", headers={"Origin": "http://evil.example"}).status_code == 403
    assert not conn.keys("rq:job:*")
    assert (
        api.post(
            "/jobs", data=body, content_type="application/json", headers={"Origin": "http://localhost"}
        ).status_code
        == 201
    )  # its own origin
    assert api.post("/jobs", json={"task": "primes", "params": {"n": 100}}).status_code == 201  # no Origin: a script


def test_dashboard_refuses_a_state_change_from_another_origin_even_with_the_token(
    conn: redis.Redis, redis_url: str
) -> None:
    (job,) = enqueue_jobs(conn, queue="queue_two")
    client = client_for(redis_url)
    headers = {"X-CSRFToken": token(client), "Accept": "application/json"}
    refused = client.post(f"/jobs/{job.id}/stop", headers={**headers, "Origin": "http://evil.example"})
    assert refused.status_code == 403 and "another site" in refused.json["error"]
    assert client.post(f"/jobs/{job.id}/stop", headers={**headers, "Origin": "http://localhost"}).status_code == 200


# (f) Cookies -------------------------------------------------------------------------------------


def cookies(headers: list[tuple[str, str]]) -> list[str]:
    return [value for name, value in headers if name.lower() == "set-cookie"]


@pytest.mark.parametrize("secure_args, secure_env", [([], None), (["--secure-cookies"], None), ([], "1")])
def test_cookies_are_httponly_and_secure_when_asked(
    conn: redis.Redis, processes: Processes, redis_url: str, secure_args: list, secure_env: str | None
) -> None:
    port = free_port()
    env = cli_env(REDIS_URL=redis_url, WORKQUEUE_SECURE_COOKIES=secure_env)
    processes.start("dashboard_main.py", "--port", str(port), *secure_args, env=env)
    wait_for(lambda: answers(f"http://127.0.0.1:{port}/"), 20, "the dashboard to answer")
    status, headers, body = request(port, "GET", "/")
    assert status == 200 and re.search(rb'data-csrf="[^"]+"', body)  # the token is in the page
    (session,) = cookies(headers)  # the session only: no CSRF cookie for a script to read
    assert session.startswith("session=") and "HttpOnly" in session and "SameSite=Strict" in session
    assert ("Secure" in session) == bool(secure_args or secure_env)
    for path in ("/", "/api/live", "/rq/0/view/queues", "/static/rq_dashboard.js", "/nowhere"):
        status, headers, _ = request(port, "GET", path)
        named = {name.lower(): value for name, value in headers}  # header names are case-insensitive (granian: lower)
        assert "script-src 'self'" in named["content-security-policy"], (path, status)
