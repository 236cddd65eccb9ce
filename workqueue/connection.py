"""Resolving the one Redis URL a command uses, and connecting to it.

``--redis-url``, else ``REDIS_URL``, else the default loopback URL, where the embedded server is
started when nothing answers. An explicit URL that does not answer is an error, never replaced.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional
from urllib.parse import urlsplit, urlunsplit

import redis

from workqueue import embedded
from workqueue.errors import BadInput, RedisUnavailable
from workqueue.settings import Settings

SCHEMES = ("redis", "rediss", "unix")


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


def resolve(redis_url: Optional[str] = None, settings: Optional[Settings] = None) -> Target:
    """The URL this command uses: the flag, else ``REDIS_URL``, else the embedded default."""
    settings = settings or Settings.from_env()
    url = redis_url or os.environ.get("REDIS_URL") or ""
    if not url.strip():
        return Target(settings.default_url, explicit=False)
    if urlsplit(url).scheme not in SCHEMES:
        raise BadInput(f"invalid Redis URL {mask_url(url)!r}: it must start with redis://, rediss:// or unix://")
    return Target(url, explicit=True)


def connect(redis_url: Optional[str] = None, settings: Optional[Settings] = None) -> tuple[redis.Redis, Target]:
    """A checked connection to the resolved Redis, starting the embedded server if it is the default."""
    settings = settings or Settings.from_env()
    target = resolve(redis_url, settings)
    try:
        conn = redis.Redis.from_url(target.url, socket_connect_timeout=5, health_check_interval=30)
        probe = redis.Redis.from_url(target.url, socket_connect_timeout=5, retry=embedded.NO_RETRY)
    except ValueError as exc:
        raise BadInput(f"invalid Redis URL {target.display!r}: {exc}") from None
    try:
        probe.ping()
    except redis.AuthenticationError as exc:
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
