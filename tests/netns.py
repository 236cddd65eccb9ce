"""Hosts for tests, made of Linux network namespaces: each "host" is a namespace with an address of
its own on a private subnet, joined to the others by a bridge in the root namespace through a veth
pair, and a hostname of its own (its processes run in a UTS namespace too), so that workers on
different hosts are told apart as on different machines. Cutting a host off sets its end of the
link down: its processes keep running, and reach nothing, until the link is set up again.

Needs root and iproute2's ``ip`` (``available`` says why not). Everything made here (namespaces,
links, processes, files) is removed by :meth:`Network.remove`, which the fixture runs also when
the test fails.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


def unavailable() -> str | None:
    """Why namespace hosts cannot be made here (None: they can)."""
    if os.geteuid() != 0:
        return "network-namespace hosts need root (ip netns add)"
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return f"network-namespace hosts need `{tool}` (iproute2 / util-linux), not found"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=20)


@dataclass
class Host:
    """One namespace: ``name`` is also its hostname, ``address`` its IPv4 address on the subnet."""

    name: str
    namespace: str
    link: str  # the root namespace's end of its veth pair
    address: str
    network: Network
    processes: list[subprocess.Popen] = field(default_factory=list)

    def command(self, *args: str) -> list[str]:
        """``args`` run on this host: in its network namespace, under its own hostname."""
        return [
            "ip", "netns", "exec", self.namespace, "unshare", "--uts", "sh", "-c",
            'hostname "$0" && exec "$@"', self.name, *args,
        ]  # fmt: skip

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        """A long-running process on this host (its own session, output to a file named after it),
        stopped by :meth:`Network.remove` if the test has not stopped it."""
        log = self.network.log_path(f"{self.name}-{len(self.processes)}")
        with open(log, "w") as out:
            process = subprocess.Popen(
                self.command(*args), cwd=ROOT, env=env or dict(os.environ), stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True,
            )  # fmt: skip
        process.log = log  # type: ignore[attr-defined]
        self.processes.append(process)
        return process

    def python(self, script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        """One of the repository's commands, started on this host."""
        return self.start(sys.executable, str(ROOT / script), *args, env=env)

    def run(self, script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """One of the repository's commands run to completion on this host."""
        return subprocess.run(
            self.command(sys.executable, str(ROOT / script), *args), cwd=ROOT, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    def cut(self) -> None:
        """Cut this host off: its link goes down; nothing it sends or is sent arrives."""
        _ip("link", "set", self.link, "down")

    def reconnect(self) -> None:
        _ip("link", "set", self.link, "up")


class Network:
    """A bridge and the hosts on it, on 10.213.N.0/24; the root namespace is 10.213.N.254, so the
    test itself reaches every host (and a host cut off is cut off from the test too)."""

    def __init__(self) -> None:
        self.tag = secrets.token_hex(2)
        self.subnet = f"10.213.{secrets.randbelow(250)}"
        self.bridge = f"wqbr{self.tag}"
        self.hosts: list[Host] = []
        self.dir = Path(tempfile.mkdtemp(prefix="wq-hosts-"))
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.subnet}.254/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
        except BaseException:
            self.remove()
            raise

    @property
    def address(self) -> str:
        """The root namespace's (the test's) address on the subnet."""
        return f"{self.subnet}.254"

    def log_path(self, name: str) -> Path:
        return self.dir / f"{name}.log"

    def add_host(self, name: str) -> Host:
        number = len(self.hosts) + 1
        namespace, link = f"wq-{self.tag}-{name}", f"wq{self.tag}h{number}"
        host = Host(name, namespace, link, f"{self.subnet}.{number}", self)
        self.hosts.append(host)  # before it exists: remove() then undoes whatever part was made
        _ip("netns", "add", namespace)
        _ip("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        _ip("link", "set", link, "master", self.bridge)
        _ip("link", "set", link, "up")
        _ip("-n", namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
        return host

    def remove(self) -> None:
        """Stop every process the hosts started (their whole sessions), then delete the links, the
        namespaces and the bridge, and the log files. Never raises: it is a finalizer. Hosts cut off
        are joined again first, so that their processes stop gracefully, as they would."""
        for host in self.hosts:
            subprocess.run(["ip", "link", "set", host.link, "up"], capture_output=True, timeout=20)
        for host in self.hosts:
            for process in host.processes:
                _stop(process)
        for host in self.hosts:
            subprocess.run(["ip", "link", "del", host.link], capture_output=True, timeout=20)
            subprocess.run(["ip", "netns", "del", host.namespace], capture_output=True, timeout=20)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, timeout=20)
        shutil.rmtree(self.dir, ignore_errors=True)


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM a host's process and wait; then SIGKILL its session, and anything left of it."""
    try:
        descendants = psutil.Process(process.pid).children(recursive=True) if process.poll() is None else []
    except psutil.NoSuchProcess:
        descendants = []
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()
    _gone, alive = psutil.wait_procs(descendants, timeout=10)
    for leftover in alive:
        leftover.kill()
