"""Redis replies as the types they are here.

Every connection workqueue makes leaves redis-py's ``decode_responses`` off, so every reply is
bytes; redis-py annotates them ``bytes | str`` (one client class serves both settings). These
narrow a reply once, where a bare ``.decode()`` would leave the type checker guessing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def decoded(reply: bytes | str, errors: str = "strict") -> str:
    """A reply as text (UTF-8): raises UnicodeDecodeError on bytes that are not, unless ``errors``
    says otherwise (as ``bytes.decode``)."""
    return reply.decode(errors=errors) if isinstance(reply, bytes) else reply


def decoded_or_none(reply: bytes | str | None) -> str | None:
    """A reply that may be missing (a key or field that does not exist) as text, or None."""
    return None if reply is None else decoded(reply)


def as_bytes(reply: bytes | str) -> bytes:
    """A reply as the bytes Redis holds."""
    return reply if isinstance(reply, bytes) else reply.encode()


def decoded_map(reply: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    """A hash (HGETALL, a stream entry's fields) as text keys and values."""
    return {decoded(k): decoded(v) for k, v in reply.items()}


def decoded_members(reply: Iterable[object]) -> list[str]:
    """A list of members (LRANGE, SMEMBERS, a ZRANGE without scores) as text; redis-py types a
    ZRANGE's reply with its WITHSCORES shape too, which is never asked for here."""
    return [decoded(member) for member in reply if isinstance(member, (bytes, str))]
