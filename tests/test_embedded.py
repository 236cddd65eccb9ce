"""The zero-set-up default: the bundled redis-server, started on first use, shared, stopped on demand."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest
import redis

from tests.helpers import ROOT, RedisServer, cli_env, free_port, run_cli
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


def owner(port: int, data: Path) -> redis.Redis:
    """A client of the embedded server with the password workqueue made for it."""
    return redis.Redis(port=port, password=(data / "password").read_text().strip(), decode_responses=True)


def raw(port: int, command: bytes) -> bytes:
    """The first reply line to an inline command sent without any credentials."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(command + b"\r\n")
        return sock.recv(4096).split(b"\r\n")[0]


@pytest.mark.slow
def test_first_command_starts_the_embedded_server_and_later_ones_share_it(embedded_env) -> None:
    env, port, data = embedded_env
    first = run_cli("producer_main.py", "--task", "sleep", "--count", "3", env=env)
    assert first.returncode == 0, first.stderr
    assert f"redis://:***@127.0.0.1:{port}/0" in first.stdout
    pid = int((data / "redis.pid").read_text())
    conn = owner(port, data)
    assert conn.info("persistence")["aof_enabled"] == 1 and (data / "appendonly.aof").is_file()
    assert conn.info("server")["config_file"] == ""  # the configuration came on standard input
    second = run_cli("producer_main.py", "--task", "sleep", env=env)
    assert second.returncode == 0 and int((data / "redis.pid").read_text()) == pid
    assert conn.llen("rq:queue:queue_one") == 4


def test_server_configuration_is_loopback_append_only_and_passworded(tmp_path: Path) -> None:
    text = embedded.server_config(6390, tmp_path / 'a "b"', "s3cret")
    lines = text.splitlines()
    assert "bind 127.0.0.1" in lines and "appendonly yes" in lines and "appendfsync everysec" in lines
    assert 'save ""' in lines and 'requirepass "s3cret"' in lines
    assert f'dir "{tmp_path}/a \\"b\\""' in lines
    assert {'rename-command CONFIG ""', 'rename-command MODULE ""', 'rename-command SHUTDOWN ""'} <= set(lines)


@pytest.mark.slow
def test_stop_keeps_queued_jobs_in_the_append_only_log(embedded_env) -> None:
    env, port, data = embedded_env
    assert run_cli("producer_main.py", "--task", "sleep", "--count", "5", env=env).returncode == 0
    stopped = admin("redis", "stop", env=env)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert admin("redis", "status", env=env).returncode == 1
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=port, socket_connect_timeout=0.5).ping()
    assert admin("redis", "start", env=env).returncode == 0
    assert owner(port, data).llen("rq:queue:queue_one") == 5
    assert admin("redis", "status", env=env).returncode == 0


def test_only_its_owner_can_use_the_embedded_server(embedded_env) -> None:
    env, port, data = embedded_env
    assert admin("redis", "start", env=env).returncode == 0
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in data.iterdir()}
    assert {"password", "appendonly.aof", "redis.log", "redis.pid"} <= set(files)
    assert set(files.values()) == {0o600}, files
    assert raw(port, b"PING").startswith(b"-NOAUTH")
    assert raw(port, b"SET x 1").startswith(b"-NOAUTH")
    assert raw(port, b"CONFIG SET dir /tmp").startswith(b"-ERR unknown command")
    conn = owner(port, data)
    assert conn.ping()
    for command in (("CONFIG", "SET", "dir", "/tmp"), ("CONFIG", "GET", "*"), ("SAVE",), ("BGSAVE",),
                    ("MODULE", "LIST"), ("DEBUG", "SLEEP", "0"), ("SLAVEOF", "127.0.0.1", "1"),
                    ("REPLICAOF", "127.0.0.1", "1"), ("ACL", "LIST"), ("SHUTDOWN", "NOSAVE")):  # fmt: skip
        with pytest.raises(redis.ResponseError, match="unknown command"):
            conn.execute_command(*command)
    assert conn.info("memory")["maxmemory_policy"] and conn.ping()  # INFO stays: status and checks use it


@pytest.mark.slow
def test_commands_work_with_nothing_set_and_never_show_the_password(embedded_env) -> None:
    env, port, data = embedded_env
    outputs = [run_cli("producer_main.py", "--task", "sleep", "--param", "seconds=0.1", "--count", "3", env=env)]
    secret = (data / "password").read_text().strip()
    assert len(secret) >= 32
    outputs.append(run_cli("consumer_main.py", "--workers", "2", "--queue", "queue_one", "--burst", env=env))
    outputs.append(run_cli("producer_main.py", "--stats", env=env))
    outputs.append(admin("redis", "status", env=env))
    outputs.append(admin("redis", "start", env=env))
    for done in outputs:
        assert done.returncode == 0, (done.args, done.stdout, done.stderr)
        assert secret not in done.stdout + done.stderr
    assert "done 3" in outputs[1].stdout, outputs[1].stdout
    assert str(data / "password") in outputs[3].stdout
    server = psutil.Process(int((data / "redis.pid").read_text()))
    assert not any(secret in part for part in server.cmdline())
    assert secret not in (data / "redis.log").read_text()
    stopped = admin("redis", "stop", env=env)
    assert stopped.returncode == 0 and secret not in stopped.stdout + stopped.stderr


def test_an_older_open_data_folder_is_closed_at_the_next_start(embedded_env) -> None:
    env, port, data = embedded_env
    data.mkdir(parents=True, mode=0o755)
    data.chmod(0o755)
    (data / "appendonly.aof").write_text("")
    (data / "appendonly.aof").chmod(0o644)
    assert admin("redis", "start", env=env).returncode == 0
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "appendonly.aof").stat().st_mode) == 0o600


@pytest.mark.slow
def test_a_password_file_others_could_read_or_write_is_refused(embedded_env) -> None:
    env, port, data = embedded_env
    assert admin("redis", "start", env=env).returncode == 0
    (data / "password").chmod(0o644)
    refused = run_cli("producer_main.py", "--task", "sleep", env=env)
    assert refused.returncode == 1 and "open to other users (mode 0644)" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "redis stop" in refused.stderr
    if os.getuid() == 0:
        (data / "password").chmod(0o600)
        os.chown(data / "password", 65534, 65534)
        refused = run_cli("producer_main.py", "--task", "sleep", env=env)
        assert refused.returncode == 1 and "not a file of yours (uid 65534)" in refused.stderr
        os.chown(data / "password", 0, 0)


def test_concurrent_first_uses_agree_on_one_password(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", port=free_port())
    seen: list[str] = []
    threads = [threading.Thread(target=lambda: seen.append(embedded.password(settings))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(seen) == 8 and len(set(seen)) == 1
    assert [p.name for p in settings.redis_dir.iterdir()] == ["password"]


def start_like_an_older_version(port: int, data: Path) -> None:
    """The embedded server as workqueue started it before it had a password (same flags)."""
    data.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(embedded.server_binary()), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data),
                    "--appendonly", "yes", "--save", "", "--daemonize", "yes", "--pidfile", str(data / "redis.pid"),
                    "--logfile", str(data / "redis.log")], check=True, timeout=10)  # fmt: skip
    for _ in range(200):
        try:
            if redis.Redis(port=port).ping():
                return
        except redis.ConnectionError:
            threading.Event().wait(0.05)
    raise AssertionError("the old-style server did not start")


def test_an_embedded_server_started_without_a_password_is_named_and_restarted_on_demand(embedded_env) -> None:
    env, port, data = embedded_env
    start_like_an_older_version(port, data)
    redis.Redis(port=port).rpush("rq:queue:queue_one", "kept")
    refused = run_cli("producer_main.py", "--task", "sleep", env=env)
    assert refused.returncode == 1, refused.stdout
    assert refused.stderr.strip().splitlines() == [
        f"error: the embedded Redis on 127.0.0.1:{port} runs without a password (started by an older workqueue); "
        "restart it: python -m workqueue redis stop (the next command starts it with one)"
    ]
    assert admin("redis", "stop", env=env).returncode == 0
    again = run_cli("producer_main.py", "--task", "sleep", env=env)
    assert again.returncode == 0, again.stderr
    assert raw(port, b"PING").startswith(b"-NOAUTH")
    assert owner(port, data).lrange("rq:queue:queue_one", 0, 0) == ["kept"]


def test_a_foreign_redis_on_the_default_port_is_not_taken_for_the_embedded_one(tmp_path: Path) -> None:
    server = RedisServer()
    try:
        server.wait_ready()
        env = cli_env(REDIS_URL=None, WORKQUEUE_HOME=str(tmp_path / "home"), WORKQUEUE_REDIS_PORT=str(server.port))
        refused = run_cli("producer_main.py", "--task", "sleep", env=env)
        assert refused.returncode == 1
        assert f"the Redis on 127.0.0.1:{server.port} is not the embedded one (it has no password)" in refused.stderr
        assert f"REDIS_URL=redis://127.0.0.1:{server.port}/0" in refused.stderr
    finally:
        server.stop()


def test_explicit_url_that_does_not_answer_is_an_error_not_replaced(embedded_env) -> None:
    env, port, data = embedded_env
    result = run_cli("producer_main.py", "--task", "sleep", env=dict(env, REDIS_URL=f"redis://127.0.0.1:{port}/0"))
    assert result.returncode == 1 and f"cannot reach Redis at redis://127.0.0.1:{port}/0" in result.stderr
    assert not (data / "redis.pid").exists()


def test_url_resolution_order_and_schemes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", port=6390)
    monkeypatch.delenv("REDIS_URL", raising=False)
    default = resolve(None, settings)
    secret = settings.password_file.read_text().strip()
    assert default.url == f"redis://:{secret}@127.0.0.1:6390/0" and not default.explicit
    assert default.display == "redis://:***@127.0.0.1:6390/0"
    monkeypatch.setenv("REDIS_URL", "rediss://:pw@example.com:6380/1")
    assert resolve(None, settings).explicit and resolve(None, settings).url.startswith("rediss://")
    assert resolve("unix:///tmp/redis.sock", settings).url == "unix:///tmp/redis.sock"
    with pytest.raises(BadInput, match=r"must start with redis://, rediss://, unix:// or redis\+sentinel://"):
        resolve("http://example.com", settings)


def test_passwords_are_masked_wherever_urls_are_shown() -> None:
    assert mask_url("redis://user:secret@host:6379/0") == "redis://user:***@host:6379/0"
    assert mask_url("rediss://:secret@host/0") == "rediss://:***@host/0"
    assert mask_url("redis://host:6379/0") == "redis://host:6379/0"


def test_bundled_binary_is_the_one_tests_use() -> None:
    assert os.access(embedded.server_binary(), os.X_OK)
