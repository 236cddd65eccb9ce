"""docker-compose.yml and the Dockerfile agree with the code: static checks, no Docker needed.

The compose file is parsed with yaml.safe_load; the entry points' flags are checked against their
real ``--help`` text, so renaming a flag breaks this test instead of the deployment.
"""

from __future__ import annotations

import functools
import re
import shlex
import subprocess
import sys
from urllib.parse import urlsplit

import pytest
import yaml

from tests.helpers import ROOT

COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

#: The entry points whose flags are checked against their ``--help``.
ENTRY_POINTS = ("producer_main.py", "consumer_main.py", "dashboard_main.py", "gateway_main.py")


def load_compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


COMPOSE = load_compose()
SERVICES: dict = COMPOSE["services"]
APP_SERVICES = sorted(name for name in SERVICES if name != "redis")


def command_args(service: dict) -> list[str]:
    command = service.get("command")
    if command is None:
        return []
    return shlex.split(command) if isinstance(command, str) else [str(arg) for arg in command]


def script_of(args: list[str]) -> str | None:
    return next((arg for arg in args if arg.endswith(".py")), None)


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: str(value) for key, value in env.items()}


def published_ports(service: dict) -> list:
    return list(service.get("ports") or [])


@functools.cache
def help_text(script: str) -> str:
    result = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"{script} --help failed: {result.stderr}"
    return result.stdout


def test_compose_defines_redis_dashboard_consumer_and_producer():
    assert {"redis", "dashboard", "consumer", "producer"} <= set(SERVICES)


@pytest.mark.parametrize("name", APP_SERVICES)
def test_service_command_runs_a_python_script_that_exists(name):
    args = command_args(SERVICES[name])
    script = script_of(args)
    assert script, f"{name}: command {args!r} names no *.py script"
    assert (ROOT / script).is_file(), f"{name}: {script} is not in the repository"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_service_command_passes_only_flags_its_script_accepts(name):
    args = command_args(SERVICES[name])
    script = script_of(args)
    if script not in ENTRY_POINTS:
        pytest.skip(f"{script} is not a known entry point")
    text = help_text(script)
    flags = [arg.split("=", 1)[0] for arg in args[args.index(script) + 1 :] if arg.startswith("--")]
    assert flags, f"{name}: expected flags in {args!r}"
    for flag in flags:
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), f"{name}: {script} does not accept {flag}"


def test_every_service_but_redis_uses_the_same_redis_url():
    urls = {name: environment(SERVICES[name]).get("REDIS_URL") for name in APP_SERVICES}
    assert all(urls.values()), f"services without REDIS_URL: {[n for n, u in urls.items() if not u]}"
    assert len(set(urls.values())) == 1, f"REDIS_URL differs between services: {urls}"


def test_redis_url_points_at_the_redis_service():
    url = environment(SERVICES["consumer"])["REDIS_URL"]
    parts = urlsplit(url)
    assert parts.scheme in ("redis", "rediss")
    assert parts.hostname == "redis" and "redis" in SERVICES
    assert str(SERVICES["redis"].get("image", "")).startswith("redis:")


def test_redis_persists_with_append_only_file_on_a_named_volume():
    redis = SERVICES["redis"]
    args = command_args(redis)
    assert "--appendonly" in args and args[args.index("--appendonly") + 1] == "yes"
    volumes = [str(v) for v in redis.get("volumes") or []]
    named = [v.split(":", 1)[0] for v in volumes if v.endswith(":/data")]
    assert named and named[0] in (COMPOSE.get("volumes") or {}), f"/data is not a named volume: {volumes}"


def test_redis_has_a_ping_healthcheck_and_services_wait_for_it():
    test = SERVICES["redis"]["healthcheck"]["test"]
    assert "redis-cli" in " ".join(test if isinstance(test, list) else [test]) and "ping" in str(test)
    for name in APP_SERVICES:
        depends = SERVICES[name].get("depends_on") or {}
        assert isinstance(depends, dict) and depends.get("redis", {}).get("condition") == "service_healthy", (
            f"{name} does not wait for redis to be healthy"
        )


def test_consumer_scales_without_container_name_or_host_ports():
    consumer = SERVICES["consumer"]
    assert "container_name" not in consumer
    assert not published_ports(consumer)


def test_consumer_stops_gracefully_on_sigterm():
    consumer = SERVICES["consumer"]
    assert consumer.get("stop_signal", "SIGTERM") == "SIGTERM"
    assert "stop_grace_period" in consumer


@pytest.mark.parametrize("name", ["dashboard", "gateway"])
def test_server_ports_are_published_on_loopback_only(name):
    ports = published_ports(SERVICES[name])
    assert ports, f"the {name} publishes no port"
    for port in ports:
        if isinstance(port, dict):
            assert port.get("host_ip") == "127.0.0.1", port
        else:
            assert str(port).startswith("127.0.0.1:"), port


@pytest.mark.parametrize(
    "name, credentials",
    [
        ("dashboard", {"WORKQUEUE_DASHBOARD_USERNAME", "WORKQUEUE_DASHBOARD_PASSWORD"}),
        ("gateway", {"WORKQUEUE_GATEWAY_TOKEN"}),
    ],
)
def test_servers_listening_beyond_loopback_are_given_credentials(name, credentials):
    args = command_args(SERVICES[name])
    assert args[args.index("--bind") + 1] == "0.0.0.0"  # a container's port must be reachable
    assert credentials <= set(environment(SERVICES[name]))


def test_producer_does_not_start_by_default():
    assert SERVICES["producer"].get("profiles"), "the producer would run on every `docker compose up`"


def test_dockerfile_installs_requirements_and_runs_as_non_root():
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^FROM\s+python:3\.11-slim\b", text, re.M)
    assert re.search(r"^COPY\s+requirements\.txt\b", text, re.M)
    assert re.search(r"pip install\b.*--no-cache-dir.*-r requirements\.txt", text)
    assert re.search(r"^WORKDIR\s+/app\s*$", text, re.M)
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0"), "the image runs as root"
    assert not re.search(r"^ENTRYPOINT\b", text, re.M), "an ENTRYPOINT would hide the services' commands"
