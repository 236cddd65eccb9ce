"""A Redis master, one replica and three sentinels on free loopback ports, from Debian's redis-server
(run as a sentinel with ``--sentinel``, or Debian's ``redis-sentinel``), with short failover
timeouts; every process it starts it stops, and its directory it removes."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from tests.helpers import free_port, wait_for

SERVICE = "mymaster"
SYSTEM_REDIS = Path("/usr/bin/redis-server")


def sentinel_command() -> list[str] | None:
    """How to start a sentinel here: ``redis-sentinel`` or Debian's redis-server with ``--sentinel``."""
    found = shutil.which("redis-sentinel")
    if found:
        return [found]
    if SYSTEM_REDIS.exists():
        return [str(SYSTEM_REDIS), "--sentinel"]
    return None


class SentinelSetup:
    """``master`` and ``replica`` ports, three sentinels; :attr:`url` is the redis+sentinel URL."""

    def __init__(self, password: str | None = None) -> None:
        command = sentinel_command()
        if command is None:
            raise RuntimeError("no redis-sentinel nor /usr/bin/redis-server")
        self.dir = Path(tempfile.mkdtemp(prefix="wq-sentinel-"))
        self.password = password
        self.processes: dict[str, subprocess.Popen] = {}
        self.master, self.replica = free_port(), free_port()
        self.sentinels = [free_port() for _ in range(3)]
        auth = ["--requirepass", password, "--masterauth", password] if password else []
        for name, port, extra in (
            ("master", self.master, []),
            ("replica", self.replica, ["--replicaof", "127.0.0.1", str(self.master)]),
        ):
            self._start(
                name,
                [str(SYSTEM_REDIS), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(self._dir(name)),
                 "--save", "", "--appendonly", "no", *auth, *extra],
            )  # fmt: skip
        for i, port in enumerate(self.sentinels):
            conf = self._dir(f"sentinel{i}") / "sentinel.conf"
            lines = [
                f"port {port}",
                "bind 127.0.0.1",
                f"dir {conf.parent}",
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.master} 2",
                f"sentinel down-after-milliseconds {SERVICE} 1000",
                f"sentinel failover-timeout {SERVICE} 3000",
                f"sentinel parallel-syncs {SERVICE} 1",
            ]
            if password:
                lines.append(f"sentinel auth-pass {SERVICE} {password}")
            conf.write_text("\n".join(lines) + "\n")
            self._start(f"sentinel{i}", [*command, str(conf)] if command[-1] != "--sentinel" else
                        [command[0], str(conf), "--sentinel"])  # fmt: skip
        auth_part = f":{password}@" if password else ""
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinels)
        self.url = f"redis+sentinel://{auth_part}{hosts}/{SERVICE}/0"

    def _dir(self, name: str) -> Path:
        path = self.dir / name
        path.mkdir(exist_ok=True)
        return path

    def _start(self, name: str, args: list[str]) -> None:
        self.processes[name] = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, password=self.password, socket_connect_timeout=0.5, socket_timeout=2)

    def master_port(self) -> int | None:
        """The master's port as the first sentinel that answers names it."""
        for port in self.sentinels:
            try:
                found = redis.Redis(port=port, socket_timeout=1).sentinel_get_master_addr_by_name(SERVICE)
            except redis.RedisError:
                continue
            if found:
                return int(found[1])
        return None

    def wait_ready(self) -> None:
        """The replica in sync and every sentinel knowing the replica and the other sentinels."""

        def synced() -> bool:
            try:
                info = self.client(self.replica).info("replication")
            except redis.RedisError:
                return False
            return info.get("master_link_status") == "up"

        wait_for(synced, 20, "the replica to sync")

        def known() -> bool:
            for port in self.sentinels:
                try:
                    state = redis.Redis(port=port, socket_timeout=1).sentinel_master(SERVICE)
                except redis.RedisError:
                    return False
                if int(state.get("num-slaves", 0)) < 1 or int(state.get("num-other-sentinels", 0)) < 2:
                    return False
            return True

        wait_for(known, 30, "the sentinels to know the replica and each other")

    def kill_master(self) -> None:
        """SIGKILL the master (a crash: nothing it had not sent to its replica survives)."""
        process = self.processes["master"]
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    def wait_failover(self, timeout: float = 60) -> None:
        """Until the sentinels name the replica as master and it takes writes."""

        def promoted() -> bool:
            if self.master_port() != self.replica:
                return False
            try:
                return self.client(self.replica).info("replication").get("role") == "master"
            except redis.RedisError:
                return False

        wait_for(promoted, timeout, "the sentinels to promote the replica")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def settle(seconds: float) -> None:
    time.sleep(seconds)
