"""Where tasks and callbacks may connect: one network policy for the scraper and the gateway's
callbacks, so neither can be pointed at the machine's own services or its cloud's metadata.

Link-local and cloud-metadata addresses are refused always; loopback, private, shared (CGNAT),
multicast and reserved addresses are refused unless a network in ``WORKQUEUE_ALLOW_NETWORKS``
(CIDRs, comma-separated, read from the environment of the worker or gateway; default
``127.0.0.0/8,::1/128``, so a laptop's demo works) holds them.

The check is made where the connection is made: :func:`client` gives an httpx client whose
transport resolves each host, checks every address it resolves to, and then connects to a
checked address (never resolving again), on every request and every redirect hop. So a name
that resolves to a public address when checked and to a private one a moment later (DNS
rebinding) cannot slip through, and no refused address is ever connected to.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

from workqueue.errors import BadInput, PermanentError, WorkqueueError
from workqueue.settings import ALLOW_ENV

DEFAULT_ALLOW = "127.0.0.0/8,::1/128"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Instance-metadata services (AWS, Azure, GCP, Oracle, DigitalOcean: 169.254.169.254; AWS over
#: IPv6; Alibaba; Oracle's other address): refused whatever the allow list says.
METADATA = tuple(
    ipaddress.ip_network(n) for n in ("169.254.169.254/32", "fd00:ec2::254/128", "100.100.100.200/32", "192.0.0.192/32")
)
LINK_LOCAL = tuple(ipaddress.ip_network(n) for n in ("169.254.0.0/16", "fe80::/10"))
_SHARED = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class AddressRefused(WorkqueueError, PermanentError):
    """Raised when a URL's host is (or resolves to) an address the network policy refuses (never
    retried: the policy will refuse it again)."""


def _destination(address: Address) -> Address:
    """Where ``address`` really leads: the IPv4 address an IPv4-mapped, NAT64 or 6to4 one carries."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if address.sixtofour is not None:
            return address.sixtofour
    return address


def _kind(address: Address) -> str | None:
    """What makes ``address`` not public (None if it is)."""
    if address.is_loopback:
        return "a loopback address"
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_multicast:
        return "a multicast address"
    if address in _SHARED:
        return "a shared (carrier-grade NAT) address"
    if address.is_private:
        return "a private address"
    if address.is_reserved or not address.is_global:
        return "a reserved address"
    return None


@dataclass(frozen=True)
class NetworkPolicy:
    """Which addresses may be connected to: public ones, and those in ``allowed``."""

    allowed: tuple[Network, ...]

    @classmethod
    def parse(cls, text: str) -> NetworkPolicy:
        """A policy from CIDRs, comma-separated (empty: nothing beyond public addresses)."""
        allowed = []
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            try:
                allowed.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise BadInput(
                    f"{ALLOW_ENV}: {item!r} is not a network (expected CIDRs such as 10.0.0.0/8, comma-separated)"
                ) from None
        return cls(tuple(allowed))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> NetworkPolicy:
        """The policy ``WORKQUEUE_ALLOW_NETWORKS`` sets (unset: loopback only; set empty: none);
        parsed once per value (every scrape asks)."""
        return _parsed(environ.get(ALLOW_ENV, DEFAULT_ALLOW))

    def refusal(self, address: Address) -> str | None:
        """Why ``address`` may not be connected to (None if it may): ``<address> is ...``."""
        why = self._why(address)
        return f"{why[0]} is {why[1]}" if why else None

    def _why(self, address: Address) -> tuple[str, str] | None:
        target = _destination(address)
        shown = str(address) if target == address else f"{address} (that is, {target})"
        if any(target in n for n in METADATA):
            return shown, "a cloud metadata address (never allowed)"
        if any(target in n for n in LINK_LOCAL):
            return shown, "a link-local address (never allowed)"
        kind = _kind(target)
        if kind and not any(target.version == n.version and target in n for n in self.allowed):
            return shown, f"{kind} (allow it with {ALLOW_ENV})"
        return None

    def resolve(self, host: str, port: int) -> list[str]:
        """The addresses ``host`` resolves to, every one checked; raises AddressRefused if any is
        refused, OSError if the host does not resolve."""
        literal = _literal(host)
        if literal is not None:
            found = [literal]
        else:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            found = list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))
        for address in found:
            why = self._why(address)
            if why:
                said = f"{why[0]} is {why[1]}" if literal is not None else f"{host} resolves to {why[0]}, {why[1]}"
                raise AddressRefused(f"refused: {said}")
        return [str(a) for a in found]

    def check_url(self, url: str) -> None:
        """Refuse ``url`` now if its host is or resolves to a refused address (one that does not
        resolve passes: it is checked again, like every host, when connected to)."""
        host = httpx.URL(url).host
        try:
            self.resolve(host, 0)
        except OSError:
            pass


@functools.lru_cache(maxsize=16)
def _parsed(text: str) -> NetworkPolicy:
    """:meth:`NetworkPolicy.parse`, once per text."""
    return NetworkPolicy.parse(text)


def _literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return None


class _CheckedBackend(httpcore.SyncBackend):
    """httpcore's network backend, connecting only to addresses the policy allows, and to the
    very address it checked (the host is resolved once, here)."""

    def __init__(self, policy: NetworkPolicy) -> None:
        self.policy = policy

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = self.policy.resolve(host, port)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
        error: Exception | None = None
        for address in addresses:
            try:
                return _VerifiedOnTLS(super().connect_tcp(address, port, timeout, local_address, socket_options))
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error


class _VerifiedOnTLS(httpcore.NetworkStream):
    """A connection that, if TLS is started on it, starts it with the process's shared
    certificate-verifying context (:func:`_verifying_context`), made at the first TLS connection:
    the pool is given a bare placeholder (``_placeholder_context``), so a horse that only fetches
    ``http://`` pages never loads the CA bundle (~25 ms of CPU, and its memory)."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, timeout)

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        return self._stream.start_tls(_verifying_context(), server_hostname, timeout)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


#: Per-key limits (``workqueue.limits.pace_current_job``): called with each request's host before it
#: is sent, on a worker, so a rate-limited job's first request keeps to its key's rate on the wire.
_pacer: Callable[[str], None] | None = None


def set_pacer(pacer: Callable[[str], None] | None) -> None:
    """Install the pacer (the worker does it as it starts, the horse inherits it)."""
    global _pacer
    _pacer = pacer


class CheckedTransport(httpx.HTTPTransport):
    """httpx's transport, its connections made through the policy (proxies are not used: a proxy
    would connect on our behalf to addresses we never checked)."""

    def __init__(self, policy: NetworkPolicy, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # httpx 0.28 has no parameter for httpcore's network backend; its pool keeps it here.
        if not hasattr(self._pool, "_network_backend"):
            raise RuntimeError("httpcore's ConnectionPool no longer has _network_backend: update workqueue.network")
        self._pool._network_backend = _CheckedBackend(policy)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if _pacer is not None:
            _pacer(request.url.host)
        return super().handle_request(request)


_tls_context: ssl.SSLContext | None = None
_tls_lock = threading.Lock()


def _verifying_context() -> ssl.SSLContext:
    """httpx's default certificate-verifying context (HTTP/1.1 only, as our clients speak), made once
    per process at its first TLS connection and shared by every client (an SSLContext may be):
    loading the CA bundle costs ~25 ms of CPU, more than the rest of a scrape of a fast page, so a
    new one per job made I/O-bound jobs CPU-bound. (Made under a lock: a horse's threads starting
    their first scrapes together would each load it.)"""
    global _tls_context
    with _tls_lock:
        if _tls_context is None:
            context = httpx.create_ssl_context()
            context.set_alpn_protocols(["http/1.1"])
            _tls_context = context
        return _tls_context


def _placeholder_context() -> ssl.SSLContext:
    """What the pool is given as its TLS context: never used to connect (``_VerifiedOnTLS`` starts
    TLS with ``_verifying_context``), so bare (~0.1 ms), and verifying should it ever be."""
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def client(policy: NetworkPolicy | None = None, **kwargs: Any) -> httpx.Client:
    """An httpx client that connects only where ``policy`` (default: the environment's) allows,
    verifying certificates (with httpx's default CA bundle, loaded at the first TLS connection)."""
    transport = CheckedTransport(policy or NetworkPolicy.from_env(), verify=_placeholder_context())
    return httpx.Client(transport=transport, **kwargs)


#: Each thread's clients kept by :func:`reused_client`, by policy and settings.
_kept = threading.local()


@contextmanager
def reused_client(policy: NetworkPolicy | None = None, **kwargs: Any) -> Iterator[httpx.Client]:
    """:func:`client`, kept by the calling thread from one use to the next (a horse's thread runs job
    after job): building a client and its pool cost a fast page's scrape a tenth of its CPU, and its
    connections kept alive to a site serve that site's next job. Set per request what may differ
    between uses (timeout, redirects, headers). Nothing else carries over: its cookies are cleared
    before and after each use, and a use that ends in an exception (a timeout or stop raised in the
    thread may cut the pool's own bookkeeping) closes the client, so the next use builds a new one."""
    policy = policy or NetworkPolicy.from_env()
    key = (policy, tuple(sorted(kwargs.items())))
    kept: dict[tuple[Any, ...], httpx.Client] = _kept.__dict__.setdefault("clients", {})
    found = kept.get(key)
    if found is None or found.is_closed:
        found = kept[key] = client(policy, **kwargs)
    found.cookies.clear()
    try:
        yield found
    except BaseException:
        kept.pop(key, None)
        found.close()
        raise
    finally:
        found.cookies.clear()
