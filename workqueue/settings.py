"""Every default in one place, and the environment variables that change them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

#: The URL every command resolves when given neither ``--redis-url`` nor ``REDIS_URL``.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 6379

#: The queue the producer and consumer use unless told otherwise.
DEFAULT_QUEUE = "queue_one"

#: Bounds of the consumer's pool on one machine.
MIN_WORKERS, MAX_WORKERS = 1, 10

#: How many jobs one producer run may enqueue.
MAX_COUNT = 100_000

#: Finished jobs and their results are kept this long (seconds); failed ones for a week.
RESULT_TTL = 24 * 3600
FAILURE_TTL = 7 * 24 * 3600

#: Workers heartbeat this often (seconds); a worker silent for HEARTBEAT_TTL is taken for dead and
#: its job handed back by the sweep (``recovery.sweep``), which the consumer runs every SWEEP_INTERVAL.
#: So a worker killed without warning is noticed within HEARTBEAT_TTL + SWEEP_INTERVAL seconds.
HEARTBEAT_INTERVAL = 3
HEARTBEAT_TTL = 10
SWEEP_INTERVAL = 2.0

#: The dashboard's address, and the HTTP gateway's.
DASHBOARD_HOST, DASHBOARD_PORT = "127.0.0.1", 9181
GATEWAY_HOST, GATEWAY_PORT = "127.0.0.1", 8000
#: The gateway's bearer token (the gateway and ``producer_main.py --via`` both read it).
TOKEN_ENV = "WORKQUEUE_GATEWAY_TOKEN"
#: The shortest gateway token, and dashboard password for a bind beyond loopback (characters).
SECRET_MIN = 16
#: Host names the dashboard and the gateway answer besides their bound address (comma-separated),
#: and whether their cookies are sent over HTTPS only (behind a TLS proxy).
ALLOWED_HOSTS_ENV = "WORKQUEUE_ALLOWED_HOSTS"
SECURE_COOKIES_ENV = "WORKQUEUE_SECURE_COOKIES"


@dataclass(frozen=True)
class Settings:
    """Where the embedded Redis lives; read from the environment once per command."""

    #: ``WORKQUEUE_HOME``: the per-user data directory (embedded Redis's append-only log, pid, log).
    home: Path
    #: ``WORKQUEUE_REDIS_PORT``: the loopback port of the default URL and of the embedded server.
    port: int = DEFAULT_PORT

    @classmethod
    def from_env(cls) -> Settings:
        xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        home = Path(os.environ.get("WORKQUEUE_HOME") or Path(xdg) / "workqueue")
        port = int(os.environ.get("WORKQUEUE_REDIS_PORT") or DEFAULT_PORT)
        return cls(home=home, port=port)

    @property
    def default_url(self) -> str:
        """The default URL as shown: the embedded server's password is added by ``connection.resolve``."""
        return f"redis://{DEFAULT_HOST}:{self.port}/0"

    def default_url_with(self, password: str) -> str:
        """The default URL carrying the embedded server's password: never print it (``connection.mask_url``)."""
        return f"redis://:{quote(password, safe='')}@{DEFAULT_HOST}:{self.port}/0"

    @property
    def redis_dir(self) -> Path:
        return self.home / "redis"

    @property
    def password_file(self) -> Path:
        """The embedded server's password (0600, made at first use; nothing for the user to set)."""
        return self.redis_dir / "password"
