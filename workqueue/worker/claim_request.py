"""A worker's claim sent in one request with the commands that go before it, on the worker's own
connection (``guarded.direct_client``; a pipeline would take another from the pool): the ends it
holds (``held_ends``), or an idle worker's BLMOVE, whose wait a stop may cut (``job_steps.claim_many``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis
from rq import Queue

from workqueue.connection import pack

if TYPE_CHECKING:
    from rq.worker import Worker

    from workqueue.worker.job_steps import _Claimed

log = logging.getLogger(__name__)

#: The shortest BLMOVE wait sent (seconds): Redis 6 truncates a wait to whole milliseconds, and 0 is no limit.
SHORTEST_WAIT = 0.01


def send_after(client: redis.Redis, before: tuple[list[Any], Callable[[Any], None]], claim: list[Any]) -> Any:
    """Send ``before``'s command, then the ``claim``, in one request on ``client``'s own connection
    (a pipeline would take another from the pool); hand ``before`` its reply; the claim's reply
    (an error reply as its exception)."""
    command, answered = before
    try:
        with client.single_connection_lock:
            connection = client.connection
            assert connection is not None  # a direct client (``guarded.direct_client``) keeps one
            connection.send_packed_command([pack(command, claim)])
            replies = [_read(connection), _read(connection)]
    except BaseException as exc:  # a lost connection (or a stop): nothing read, maybe nothing written
        answered(exc)
        raise
    answered(replies[0])
    return replies[1]


class ClaimCut(Exception):
    """A stop cut a worker's wait for a job (``claim_many(wait=)``): ``cause`` is that stop, to be
    raised again once ``found``, the jobs the claim started all the same, are given back."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"the wait for a job was cut by {cause!r}")
        self.cause = cause
        self.found: list[_Claimed] = []


def send_waiting(
    worker: Worker,
    client: redis.Redis,
    queue: Queue,
    wait: float,
    before: tuple[list[Any], Callable[[Any], None]] | None,
    claim: list[Any],
) -> Any:
    """One request on ``client``'s own connection: the client's id, ``before``'s command if any, a
    BLMOVE of ``queue``'s next job into its intermediate list waiting up to ``wait`` seconds, then
    the ``claim`` (which takes the job the BLMOVE moved, ``'*'``). The claim's reply (an error
    reply as its exception), or a :class:`ClaimCut` if a stop (an exception from a signal handler)
    cut the wait: the request is then ended (:func:`_end_cut`), and the jobs its claim started, if
    it ran, are for the caller to find (``job_steps``) and give back."""
    commands: list[list[Any]] = [["CLIENT", "ID"]]
    if before is not None:
        commands.append(before[0])
    # redis-py's BLMOVE takes whole seconds; Redis takes them with decimals (6.0+), but before 7.0
    # reads one under a millisecond as 0: wait for ever (the embedded Redis is 6.2)
    wait = max(wait, SHORTEST_WAIT)
    commands += [["BLMOVE", queue.key, queue.intermediate_queue_key, "LEFT", "RIGHT", wait], claim]
    replies: list[Any] = []
    with client.single_connection_lock:
        connection = client.connection
        assert connection is not None  # a direct client (``guarded.direct_client``) keeps one
        try:
            connection.send_packed_command([pack(*commands)])
            replies.append(_read(connection, disconnect_on_error=False))
            if isinstance(replies[0], int):  # the connection a wake unblocks (``worker.idle_bell``)
                worker.idle_bell.client_id = replies[0]  # type: ignore[attr-defined]
            while len(replies) < len(commands):
                replies.append(_read(connection, disconnect_on_error=False))
        except (redis.RedisError, OSError) as exc:
            connection.disconnect()
            if before is not None and len(replies) < 2:
                before[1](exc)
            raise
        except BaseException as cut:  # a stop, raised by its signal handler
            _end_cut(worker, connection, replies[0] if replies and isinstance(replies[0], int) else None)
            if before is not None:
                before[1](replies[1] if len(replies) > 1 else cut)
            return ClaimCut(cut)
    if before is not None:
        before[1](replies[1])
    return replies[-1]


def _end_cut(worker: Worker, connection: Any, client_id: int | None) -> None:
    """End a request a stop cut. Nothing more is read from it: an exception raised by a signal
    handler can come between a socket read and the parsing of what it read, so a reply may be half
    lost. The connection is closed; first, if its id is known, its client is killed from another
    connection (``CLIENT KILL``, answered once Redis has dropped it), so that Redis runs nothing more
    of the request once this returns: its claim has run, or never will. Where that is not allowed
    (an ACL), a claim Redis runs after the close is left to the sweep, as after a worker's death."""
    try:
        if client_id is not None:
            worker.connection.execute_command("CLIENT", "KILL", "ID", client_id)
    except redis.RedisError as exc:
        log.warning("a stop cut the wait for a job; a job its claim may yet start is left to the sweep (%s)", exc)
    finally:
        connection.disconnect()


def _read(connection: Any, disconnect_on_error: bool = True) -> Any:
    try:
        return connection.read_response(disconnect_on_error=disconnect_on_error)
    except redis.exceptions.ResponseError as exc:  # an error reply: the other command's is read still
        return exc
