"""A worker's claim sent in one request with the commands that go before it, on the worker's own
connection (``guarded.direct_client``; a pipeline would take another from the pool): the ends it
holds (``held_ends``), or an idle worker's BLMOVE, whose wait a stop may cut (``job_steps.claim_many``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis
from rq import Queue

if TYPE_CHECKING:
    from rq.worker import Worker

    from workqueue.worker.job_steps import _Claimed

log = logging.getLogger(__name__)


def send_after(client: redis.Redis, before: tuple[list[Any], Callable[[Any], None]], claim: list[Any]) -> Any:
    """Send ``before``'s command, then the ``claim``, in one request on ``client``'s own connection
    (a pipeline would take another from the pool); hand ``before`` its reply; the claim's reply
    (an error reply as its exception)."""
    command, answered = before
    try:
        with client.single_connection_lock:
            connection = client.connection
            assert connection is not None  # a direct client (``guarded.direct_client``) keeps one
            connection.send_packed_command(connection.pack_commands([command, claim]))
            replies = [_read(connection), _read(connection)]
    except BaseException as exc:  # a lost connection (or a stop): nothing read, maybe nothing written
        answered(exc)
        raise
    answered(replies[0])
    return replies[1]


class ClaimCut(Exception):
    """A stop cut a worker's wait for a job (``claim_many(wait=)``): ``cause`` is that stop, to be
    raised again once ``found``, the jobs the claim started all the same, are given back."""

    def __init__(self, cause: BaseException, reply: Any) -> None:
        super().__init__(f"the wait for a job was cut by {cause!r}")
        self.cause, self.reply = cause, reply
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
    cut the wait: the wait is then ended (CLIENT UNBLOCK, from another connection) and the request
    read to its end, so that nothing it started is left unknown; if that fails too, the connection
    is closed and a job the claim may have started is left to the sweep, as a worker's death would."""
    commands: list[list[Any]] = [["CLIENT", "ID"]]
    if before is not None:
        commands.append(before[0])
    # redis-py's BLMOVE takes whole seconds; Redis takes them with decimals (6.0+)
    commands += [["BLMOVE", queue.key, queue.intermediate_queue_key, "LEFT", "RIGHT", wait], claim]
    replies: list[Any] = []
    with client.single_connection_lock:
        connection = client.connection
        assert connection is not None  # a direct client (``guarded.direct_client``) keeps one
        try:
            connection.send_packed_command(connection.pack_commands(commands))
            while len(replies) < len(commands):
                replies.append(_read(connection, disconnect_on_error=False))
        except (redis.RedisError, OSError) as exc:
            connection.disconnect()
            if before is not None and len(replies) < 2:
                before[1](exc)
            raise
        except BaseException as cut:  # a stop, raised by its signal handler
            cut_reply = _read_to_the_end(worker, connection, replies, len(commands))
            if before is not None:
                before[1](replies[1] if len(replies) > 1 else cut)
            return ClaimCut(cut, cut_reply)
    if before is not None:
        before[1](replies[1])
    return replies[-1]


def _read_to_the_end(worker: Worker, connection: Any, replies: list[Any], count: int) -> Any:
    """After a stop cut a waiting claim's request (:func:`send_waiting`): end its BLMOVE and read
    its ``count`` replies; the claim's reply, or the exception that kept it unread (the connection
    then closed)."""
    try:
        if not replies:
            replies.append(_read(connection, disconnect_on_error=False))
        if len(replies) < count - 1:  # the BLMOVE is still waiting, most likely
            try:
                worker.connection.execute_command("CLIENT", "UNBLOCK", replies[0])
            except redis.ResponseError:  # not allowed (an ACL): the wait ends by itself, soon
                log.debug("could not end a worker's wait at once", exc_info=True)
        while len(replies) < count:
            replies.append(_read(connection, disconnect_on_error=False))
    except BaseException as exc:
        connection.disconnect()
        log.warning("a stop cut the wait for a job; a job it may have started is left to the sweep (%r)", exc)
        if not isinstance(exc, Exception):  # a stop at once (SystemExit) meanwhile: that one goes on
            raise
        return exc
    return replies[-1]


def _read(connection: Any, disconnect_on_error: bool = True) -> Any:
    try:
        return connection.read_response(disconnect_on_error=disconnect_on_error)
    except redis.exceptions.ResponseError as exc:  # an error reply: the other command's is read still
        return exc
