"""Resolving the one Redis URL a command uses, and connecting to it.

``--redis-url``, else ``REDIS_URL``, else the default loopback URL, where the embedded server is
started when nothing answers. An explicit URL that does not answer is an error, never replaced.

A ``redis+sentinel://[:password@]h1:26379[,h2:26379,...]/mymaster[/db]`` URL (the convention of the
Redis-Sentinel-Url package, which rq-dashboard uses too) names a master by its Sentinel service:
every client made here asks the sentinels where the master is, and asks again whenever a
connection fails or the server it reaches says it is a replica now (redis-py's
``SentinelConnectionPool``), so clients follow a failover as an outage they ride out.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import hiredis
import redis
import redis.sentinel
import redis_sentinel_url  # type: ignore[import-untyped]
from redis.backoff import ExponentialWithJitterBackoff

from workqueue import embedded, outage
from workqueue.errors import BadInput, RedisUnavailable
from workqueue.settings import REDIS_URL_ENV, Settings

SENTINEL_SCHEME = "redis+sentinel"
SCHEMES = ("redis", "rediss", "unix", SENTINEL_SCHEME)
#: How long a client waits for one sentinel (seconds) before asking the next.
SENTINEL_TIMEOUT = 1.0

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
    if parts.scheme == SENTINEL_SCHEME:  # several host:port, which urlsplit's port cannot read
        auth, at, hosts = parts.netloc.rpartition("@")
        if not at or ":" not in auth:
            return url
        return urlunsplit(parts._replace(netloc=f"{auth.partition(':')[0]}:***@{hosts}"))
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
        raise BadInput(
            f"invalid Redis URL {mask_url(url)!r}: it must start with redis://, rediss://, unix:// or redis+sentinel://"
        )
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
        conn = client_from_url(target.url, socket_connect_timeout=5, health_check_interval=30, **options)
        probe = client_from_url(target.url, socket_connect_timeout=5, retry=embedded.NO_RETRY)
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


@dataclass
class _Shared:
    """The clients :func:`shared` made in process ``pid`` (a forked child starts a cache of its own:
    the parent's sockets and lock are never used there)."""

    pid: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    clients: dict[tuple[str, str], tuple[redis.Redis, Target]] = field(default_factory=dict)


_shared = _Shared(pid=-1)
#: What ``Settings.from_env`` reads: the default URL (port, password file) follows them.
_SETTINGS_ENV = ("XDG_DATA_HOME", "WORKQUEUE_HOME", "WORKQUEUE_REDIS_PORT", "HOME")


def shared(redis_url: str | None = None) -> tuple[redis.Redis, Target]:
    """:func:`connect`'s client, made (and its server checked) once per process and URL, then
    reused: the Python API's calls, where connecting, probing and checking the server on each call
    cost several times the enqueue itself. Thread-safe (redis-py's pool hands each thread its own
    connection); fork-safe (a child makes its own). The embedded server is started again, as
    ``connect`` would, if it has stopped since."""
    global _shared
    url = redis_url or os.environ.get(REDIS_URL_ENV) or ""
    key = (url, "" if url.strip() else "\0".join(os.environ.get(name, "") for name in _SETTINGS_ENV))
    cache = _shared
    if cache.pid != os.getpid():
        cache = _shared = _Shared(pid=os.getpid())
    hit = cache.clients.get(key)
    if hit is not None and (hit[1].explicit or embedded.running_pid(Settings.from_env()) is not None):
        return hit
    with cache.lock:
        hit = cache.clients.get(key)
        if hit is None or not (hit[1].explicit or embedded.running_pid(Settings.from_env()) is not None):
            if hit is not None:
                hit[0].close()  # the stopped embedded server's
            hit = cache.clients[key] = connect(redis_url)
    return hit


def _reason(exc: Exception) -> str:
    text = str(exc).strip().rstrip(".")
    return text.splitlines()[0] if text else type(exc).__name__


def pack(*commands: Sequence[Any]) -> bytes:
    """``commands`` in Redis's protocol, one after the other, packed by hiredis (which the requirements
    pin) as redis-py packs them, without redis-py's look at each word for buffers it would copy first:
    a worker's claim request carries the ends it writes, ~100 words a job, and that look cost the
    worker about as much as hiredis's packing itself."""
    try:
        return b"".join([hiredis.pack_command(tuple(command)) for command in commands])
    except TypeError as exc:  # as redis-py reports a word it cannot send
        raise redis.DataError(str(exc)) from None


#: Each thread's client keeping one connection of a pool, by process and pool (:func:`send_direct`).
_kept = threading.local()


def send_direct(connection: redis.Redis, *words: Any) -> Any:
    """``connection.execute_command(*words)``, sent on a connection this thread keeps from
    ``connection``'s pool and read without redis-py's per-command machinery: its pool hand-over,
    argument checks, retry wrapper and metrics cost a call Python had not run for a while (an API
    call's single enqueue) about a quarter of a millisecond. Where there is no such connection yet,
    or it fails (Redis down, restarted, failed over: it is then closed), the command goes through
    that machinery instead, whose retries ride out an outage or report it as they always did; a
    connection is kept once Redis has answered there. A command whose reply was lost with its
    connection is so sent again, as redis-py's own retry would send it again. An error reply is
    raised as redis-py raises it."""
    packed = pack(words)
    clients: dict[tuple[int, int], redis.Redis] = _kept.__dict__.setdefault("clients", {})
    key = (os.getpid(), id(connection.connection_pool))
    client = clients.get(key)
    kept = client.connection if client is not None else None
    if kept is not None:
        try:
            if kept.can_read():  # as the pool checks a connection it hands out
                raise redis.ConnectionError("a reply nobody read, or closed by the server")
            kept.send_packed_command([packed])
            return kept.read_response()
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            kept.disconnect()
            clients.pop(key).close()
    answer = connection.execute_command(*words)
    try:  # Redis answers: keep a connection for the next command
        clients[key] = redis.Redis(connection_pool=connection.connection_pool, single_connection_client=True)
    except (redis.RedisError, OSError):  # away again, or refusing a new connection (MISCONF refuses its PING)
        pass
    return answer


def without_retries(conn: redis.Redis, socket_timeout: float | None = None) -> redis.Redis:
    """A client for the same server whose commands fail at once: for status lines and probes.
    ``socket_timeout``: give up on a Redis that accepts connections but does not answer sooner."""
    pool = conn.connection_pool
    kwargs = {**pool.connection_kwargs, "retry": embedded.NO_RETRY}
    if socket_timeout is not None:
        kwargs["socket_timeout"] = kwargs["socket_connect_timeout"] = socket_timeout
    return client_like(pool.connection_class, kwargs)


def single_connection(conn: redis.Redis) -> redis.Redis:
    """A client of the same server whose commands all go over one connection of its own, never
    retried on a new one: ``WAIT`` counts the replicas that hold the writes of the connection it is
    sent on, so the writes it vouches for must have gone over that same connection."""
    pool = conn.connection_pool
    kwargs = {**pool.connection_kwargs, "retry": embedded.NO_RETRY, "max_connections": 1}
    return client_like(pool.connection_class, kwargs)


class MasterConnection(redis.sentinel.SentinelManagedConnection):
    """redis-py's Sentinel-managed connection, which asks the sentinels where the master is on every
    (re)connection. redis-py's own asks only when a pool hands the connection out: a connection kept
    across a failure (a client's single connection, a pubsub's, one reconnecting in its retry loop)
    would otherwise dial the dead master's address for as long as its retries last."""

    def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        if not self._sock and self.connection_pool.is_master:
            self.host, self.port = self.connection_pool.get_master_address()
        super().connect_check_health(check_health=check_health, retry_socket_connect=retry_socket_connect)


def client_from_url(url: str, **options: Any) -> redis.Redis:
    """``redis.Redis.from_url``, and for a ``redis+sentinel://`` URL a client of the master its
    sentinels name (a ``SentinelConnectionPool``, which finds the master again after a failover).
    Raises ValueError for a URL it cannot read."""
    if urlsplit(url).scheme != SENTINEL_SCHEME:
        return redis.Redis.from_url(url, **options)
    parsed = redis_sentinel_url.parse_sentinel_url(url)
    service = parsed.default_client.service
    if not service or parsed.default_client.type != "master":
        raise ValueError("a Sentinel URL names its master's service: redis+sentinel://host:26379[,host:port]/mymaster")
    sentinel_kwargs = {"socket_timeout": SENTINEL_TIMEOUT, "socket_connect_timeout": SENTINEL_TIMEOUT}
    sentinel = redis.sentinel.Sentinel(parsed.hosts, sentinel_kwargs={**sentinel_kwargs, **parsed.sentinel_options})
    options = {**parsed.client_options, "connection_class": MasterConnection, **options}
    return sentinel.master_for(service, redis_class=redis.Redis, **options)


def client_like(connection_class: type[redis.Connection], pool_kwargs: dict[str, Any]) -> redis.Redis:
    """A new client (with a pool of its own) built from another pool's connection class and
    arguments, as RQ's worker pool hands them to its workers. A Sentinel-managed pool's arguments
    carry its proxy (``connection_pool``): the new client gets a Sentinel pool of its own for the
    same service, so that it too looks the master up again after a failover."""
    proxy = pool_kwargs.get("connection_pool")
    if isinstance(proxy, redis.sentinel.SentinelConnectionPoolProxy):
        kwargs = {key: value for key, value in pool_kwargs.items() if key != "connection_pool"}
        pool: redis.ConnectionPool = redis.sentinel.SentinelConnectionPool(
            proxy.service_name,
            proxy.sentinel_manager,
            connection_class=connection_class,
            is_master=proxy.is_master,
            check_connection=proxy.check_connection,
            **kwargs,
        )
    else:
        pool = redis.ConnectionPool(connection_class=connection_class, **pool_kwargs)
    return redis.Redis(connection_pool=pool)


def worker_client(connection_class: type[redis.Connection], pool_kwargs: dict[str, Any]) -> Callable[..., redis.Redis]:
    """What RQ's ``run_worker`` calls as its connection class (``connection_class(connection_pool=...)``):
    the client :func:`client_like` builds, so a worker process behind Sentinel follows the master."""

    def build(connection_pool: redis.ConnectionPool) -> redis.Redis:
        connection_pool.disconnect()  # RQ's plain pool, unused (it never connected)
        return client_like(connection_class, pool_kwargs)

    return build
