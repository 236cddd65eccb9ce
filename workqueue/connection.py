"""Resolving the one Redis URL a command uses, and connecting to it.

``--redis-url``, else ``REDIS_URL``, else the default loopback URL, where the embedded server is
started when nothing answers. An explicit URL that does not answer is an error, never replaced.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialWithJitterBackoff

from workqueue import embedded, outage
from workqueue.errors import BadInput, RedisUnavailable
from workqueue.settings import REDIS_URL_ENV, Settings

SCHEMES = ("redis", "rediss", "unix")

#: Workers ride out a Redis outage of a few minutes: every command is retried with exponential
#: backoff and jitter (0.5 s doubling to 5 s) for about that long before giving up, unless the
#: process is stopping (then for ``settings.OUTAGE_STOP_GRACE`` seconds at most).
OUTAGE_RETRY = outage.OutageRetry(ExponentialWithJitterBackoff(cap=5.0, base=0.5), 60)


@dataclass(frozen=True)
class Target:
    """A resolved Redis URL and whether the user named it (explicit) or it is the default."""

    url: str
    explicit: bool

    @property
    def display(self) -> str:
        return mask_url(self.url)


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***``, safe to print or log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def resolve(redis_url: str | None = None, settings: Settings | None = None) -> Target:
    """The URL this command uses: the flag, else ``REDIS_URL``, else the embedded default."""
    settings = settings or Settings.from_env()
    url = redis_url or os.environ.get(REDIS_URL_ENV) or ""
    if not url.strip():
        return Target(settings.default_url_with(embedded.password(settings)), explicit=False)
    if urlsplit(url).scheme not in SCHEMES:
        raise BadInput(f"invalid Redis URL {mask_url(url)!r}: it must start with redis://, rediss:// or unix://")
    return Target(url, explicit=True)


def connect(
    redis_url: str | None = None, settings: Settings | None = None, *, ride_out_outages: bool = False
) -> tuple[redis.Redis, Target]:
    """A checked connection to the resolved Redis, starting the embedded server if it is the default.

    With ``ride_out_outages`` (workers), commands wait out an outage instead of failing at once.
    """
    settings = settings or Settings.from_env()
    target = resolve(redis_url, settings)
    try:
        options = {"retry": OUTAGE_RETRY} if ride_out_outages else {}
        conn = redis.Redis.from_url(target.url, socket_connect_timeout=5, health_check_interval=30, **options)
        probe = redis.Redis.from_url(target.url, socket_connect_timeout=5, retry=embedded.NO_RETRY)
    except ValueError as exc:
        raise BadInput(f"invalid Redis URL {target.display!r}: {exc}") from None
    try:
        try:
            probe.ping()
        except redis.ResponseError as exc:
            if outage.refusal(exc) is None:
                raise
            # It answers but refuses writes for now (MISCONF refuses PING too): an outage that each
            # command rides out or reports, not a wrong URL.
        if not target.explicit:
            embedded.check_guarded(settings)
        outage.check_eviction_policy(probe, f"Redis at {target.display}")
    except redis.AuthenticationError as exc:
        if not target.explicit:
            raise RedisUnavailable(embedded.refusal(settings, no_password=False)) from None
        raise RedisUnavailable(f"Redis at {target.display} refused the credentials: {exc}") from None
    except redis.ResponseError as exc:
        raise RedisUnavailable(f"Redis at {target.display} refused the connection: {exc}") from None
    except redis.ConnectionError as exc:
        if target.explicit:
            raise RedisUnavailable(f"cannot reach Redis at {target.display}: {_reason(exc)}") from None
        embedded.ensure_running(settings)
    finally:
        probe.close()
    return conn, target


def _reason(exc: Exception) -> str:
    text = str(exc).strip().rstrip(".")
    return text.splitlines()[0] if text else type(exc).__name__


def without_retries(conn: redis.Redis, socket_timeout: float | None = None) -> redis.Redis:
    """A client for the same server whose commands fail at once: for status lines and probes.
    ``socket_timeout``: give up on a Redis that accepts connections but does not answer sooner."""
    pool = conn.connection_pool
    kwargs = {**pool.connection_kwargs, "retry": embedded.NO_RETRY}
    if socket_timeout is not None:
        kwargs["socket_timeout"] = kwargs["socket_connect_timeout"] = socket_timeout
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs))
