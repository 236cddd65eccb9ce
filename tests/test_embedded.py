"""The zero-set-up default: the bundled redis-server, started on first use, shared, stopped on demand."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from tests.conftest import ROOT, cli_env, free_port, run_cli
from workqueue import embedded
from workqueue.connection import mask_url, resolve
from workqueue.errors import BadInput
from workqueue.settings import Settings


@pytest.fixture
def embedded_env(tmp_path: Path):
    """Commands with no REDIS_URL, their default server on a free port with data under tmp_path."""
    port = free_port()
    env = cli_env(REDIS_URL=None, WORKQUEUE_HOME=str(tmp_path / "home"), WORKQUEUE_REDIS_PORT=str(port))
    yield env, port, tmp_path / "home" / "redis"
    settings = Settings(home=tmp_path / "home", port=port)
    embedded.stop(settings)


def admin(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workqueue", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip


def test_first_command_starts_the_embedded_server_and_later_ones_share_it(embedded_env) -> None:
    env, port, data = embedded_env
    first = run_cli("producer_main.py", "--task", "sleep", "--count", "3", env=env)
    assert first.returncode == 0, first.stderr
    assert f"redis://127.0.0.1:{port}/0" in first.stdout
    pid = int((data / "redis.pid").read_text())
    conn = redis.Redis(port=port)
    config = redis.Redis(port=port, decode_responses=True).config_get("*")
    assert config["appendonly"] == "yes" and config["appendfsync"] == "everysec"
    assert config["bind"] == "127.0.0.1" and Path(config["dir"]) == data
    second = run_cli("producer_main.py", "--task", "sleep", env=env)
    assert second.returncode == 0 and int((data / "redis.pid").read_text()) == pid
    assert conn.llen("rq:queue:queue_one") == 4


def test_stop_keeps_queued_jobs_in_the_append_only_log(embedded_env) -> None:
    env, port, data = embedded_env
    assert run_cli("producer_main.py", "--task", "sleep", "--count", "5", env=env).returncode == 0
    stopped = admin("redis", "stop", env=env)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert admin("redis", "status", env=env).returncode == 1
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=port, socket_connect_timeout=0.5).ping()
    assert admin("redis", "start", env=env).returncode == 0
    assert redis.Redis(port=port).llen("rq:queue:queue_one") == 5
    assert admin("redis", "status", env=env).returncode == 0


def test_explicit_url_that_does_not_answer_is_an_error_not_replaced(embedded_env) -> None:
    env, port, data = embedded_env
    result = run_cli("producer_main.py", "--task", "sleep", env=dict(env, REDIS_URL=f"redis://127.0.0.1:{port}/0"))
    assert result.returncode == 1 and f"cannot reach Redis at redis://127.0.0.1:{port}/0" in result.stderr
    assert not (data / "redis.pid").exists()


def test_url_resolution_order_and_schemes(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(home=Path("/nonexistent"), port=6390)
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert resolve(None, settings).url == "redis://127.0.0.1:6390/0" and not resolve(None, settings).explicit
    monkeypatch.setenv("REDIS_URL", "rediss://:pw@example.com:6380/1")
    assert resolve(None, settings).explicit and resolve(None, settings).url.startswith("rediss://")
    assert resolve("unix:///tmp/redis.sock", settings).url == "unix:///tmp/redis.sock"
    with pytest.raises(BadInput, match="must start with redis://, rediss:// or unix://"):
        resolve("http://example.com", settings)


def test_passwords_are_masked_wherever_urls_are_shown() -> None:
    assert mask_url("redis://user:secret@host:6379/0") == "redis://user:***@host:6379/0"
    assert mask_url("rediss://:secret@host/0") == "rediss://:***@host/0"
    assert mask_url("redis://host:6379/0") == "redis://host:6379/0"


def test_bundled_binary_is_the_one_tests_use() -> None:
    assert os.access(embedded.server_binary(), os.X_OK)
