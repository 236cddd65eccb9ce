"""Where a server of ours may listen: on loopback freely, beyond it only when requests must carry
credentials. The dashboard and the gateway both start by asking :func:`check_bind`."""

from __future__ import annotations

import ipaddress
import socket

from workqueue.errors import BadInput


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback one (unknown names are not)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def check_bind(host: str, protected: bool, what: str, remedy: str) -> None:
    """Refuse to listen beyond loopback unprotected: anyone who reached the port could ``what``."""
    if not protected and not is_loopback(host):
        raise BadInput(
            f"refusing to listen on {host} without credentials: anyone who reaches it could {what}; {remedy}"
        )


def url_host(host: str) -> str:
    """``host`` as it goes in a URL (IPv6 addresses in brackets)."""
    return f"[{host}]" if ":" in host else host
