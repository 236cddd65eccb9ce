"""What both web apps (the dashboard and the gateway) put in front of every request, whatever
network reaches them: only the Host names they serve (DNS rebinding), no state change from another
site's page (Origin), JSON bodies only where the API takes JSON, and a per-client backoff on
failed logins and tokens. One mechanism, installed by each app's ``create_app``."""

from __future__ import annotations

import ipaddress
import math
import os
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from flask import Flask, Response, request

from workqueue.bind_address import is_loopback
from workqueue.errors import BadInput
from workqueue.settings import ALLOWED_HOSTS_ENV, SECURE_COOKIES_ENV

#: What changes nothing: no Origin check, no body check.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Methods whose body the JSON-only rule covers.
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})

_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_WILDCARDS = frozenset({"", "0.0.0.0", "::"})

#: How an app answers a refusal: status and one-line message to a response in its own format.
Refuse = Callable[[int, str], Response]


class Backoff:
    """Failed logins per client address: after ``free`` failures in a row the client is refused
    (429) for ``first`` seconds, twice as long after each further failure, at most ``cap``.
    A success forgets the client. At most ``max_clients`` are remembered (the oldest forgotten
    first), so the memory stays bounded whatever addresses an attacker uses."""

    def __init__(
        self,
        free: int = 5,
        first: float = 1.0,
        cap: float = 300.0,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free, self.first, self.cap, self.max_clients, self.clock = free, first, cap, max_clients, clock
        self._clients: OrderedDict[str, tuple[int, float]] = OrderedDict()  # failures, refused until
        self._lock = threading.Lock()

    def wait(self, client: str) -> float:
        """Seconds ``client`` must still wait before it may try again (0: it may now)."""
        with self._lock:
            entry = self._clients.get(client)
        return max(0.0, entry[1] - self.clock()) if entry else 0.0

    def failed(self, client: str) -> None:
        with self._lock:
            failures = self._clients.pop(client, (0, 0.0))[0] + 1
            over = failures - self.free + 1
            until = self.clock() + min(self.cap, self.first * 2 ** (over - 1)) if over > 0 else 0.0
            self._clients[client] = (failures, until)
            while len(self._clients) > self.max_clients:
                self._clients.popitem(last=False)

    def succeeded(self, client: str) -> None:
        if client in self._clients:
            with self._lock:
                self._clients.pop(client, None)


def host_name(host: str) -> str:
    """A Host header (or bind address) without its port and brackets, lower case."""
    host = host.strip().lower().rstrip(".")
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host[1:]
    if host.count(":") == 1:
        return host.split(":")[0]
    return host


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class HostPolicy:
    """The Host headers an app answers. A name not listed is what a DNS-rebinding page sends."""

    names: frozenset[str]
    #: Bound to every interface: a client that typed an address reached us by it (no rebinding
    #: without a name), so any address literal is answered; names must still be listed.
    any_address: bool = False

    @classmethod
    def for_bind(cls, bind: str, extra: Iterable[str] = ()) -> HostPolicy:
        """The bound address; loopback names for a loopback bind; for a wildcard bind also this
        machine's own names; plus ``extra`` (``--allowed-host``, ``WORKQUEUE_ALLOWED_HOSTS``)."""
        bound = host_name(bind)
        names = {bound} if bound not in _WILDCARDS else set()
        wildcard = bound in _WILDCARDS
        if wildcard or is_loopback(bound):
            names |= _LOOPBACK_NAMES
        if wildcard:
            names |= {host_name(socket.gethostname()), host_name(socket.getfqdn())}
        for name in extra:
            name = host_name(name)
            if not name or "/" in name or " " in name:
                raise BadInput(f"allowed host {name!r}: expected a host name or address, without a scheme or path")
            names.add(name)
        return cls(frozenset(names), any_address=wildcard)

    def allows(self, host: str) -> bool:
        name = host_name(host)
        return name in self.names or (self.any_address and _is_ip(name))


def hosts_from_env(given: Iterable[str] = ()) -> list[str]:
    """``given`` (the repeatable flag) plus the comma-separated names in WORKQUEUE_ALLOWED_HOSTS."""
    from_env = [n.strip() for n in os.environ.get(ALLOWED_HOSTS_ENV, "").split(",") if n.strip()]
    return [*given, *from_env]


def secure_cookies_from_env(flag: bool) -> bool:
    return flag or os.environ.get(SECURE_COOKIES_ENV, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass
class Guard:
    """The policy one app enforces (see the module's docstring)."""

    hosts: HostPolicy = field(default_factory=lambda: HostPolicy.for_bind("127.0.0.1"))
    #: Cookies only over HTTPS (behind a TLS proxy): ``--secure-cookies``.
    secure_cookies: bool = False
    backoff: Backoff = field(default_factory=Backoff)

    @classmethod
    def for_bind(cls, bind: str, extra_hosts: Iterable[str] = (), secure_cookies: bool = False) -> Guard:
        return cls(HostPolicy.for_bind(bind, extra_hosts), secure_cookies)

    # Logins: the app's authentication calls these around its own check.
    def throttled(self, refuse: Refuse) -> Response | None:
        """A 429 (with Retry-After) if this request's client must wait after failed logins."""
        wait = self.backoff.wait(_client())
        if wait <= 0:
            return None
        response = refuse(429, f"too many failed logins from {_client()}; try again in {math.ceil(wait)} s")
        response.headers["Retry-After"] = str(math.ceil(wait))
        return response

    def failed(self) -> None:
        self.backoff.failed(_client())

    def succeeded(self) -> None:
        self.backoff.succeeded(_client())


def _client() -> str:
    return request.remote_addr or "unknown"


def same_origin(origin: str, host: str) -> bool:
    """Whether an Origin header names this very host (and port) that the request was sent to."""
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()


def install(app: Flask, guard: Guard, refuse: Refuse, *, json_only: bool = False) -> None:
    """Check every request to ``app``, before anything else of the app: Host (400), Origin on a
    state change (403), and with ``json_only`` a JSON Content-Type on a body (415)."""
    app.extensions["workqueue.guard"] = guard
    if guard.secure_cookies:
        app.config["SESSION_COOKIE_SECURE"] = True

    def check() -> Response | None:
        host, method = request.host, request.method  # each read of ``request`` is a context lookup, ``host`` a parse
        if not guard.hosts.allows(host):
            return refuse(
                400,
                f"this server does not answer to the host {host_name(host)!r}; "
                f"start it with --allowed-host NAME (or {ALLOWED_HOSTS_ENV}) to serve that name",
            )
        if method in SAFE_METHODS or request.routing_exception is not None:
            return None  # a 404 or 405 says more than any check below
        origin = request.headers.get("Origin")
        if origin is not None and not same_origin(origin, host):
            return refuse(403, f"refused: a state change from another site (Origin {origin[:100]})")
        if json_only and method in BODY_METHODS and request.mimetype != "application/json":
            return refuse(415, "send the body as JSON, with Content-Type: application/json")
        return None

    app.before_request_funcs.setdefault(None, []).insert(0, check)
