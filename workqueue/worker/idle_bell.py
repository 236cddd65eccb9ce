"""A worker's answer to its idle bell (``workqueue.bells``): a ``wake`` on its command channel ends
its wait at once, so that its claim looks at every queue and level.

The wake comes in RQ's listening thread; the wait is a BLMOVE the worker's thread sent on its own
connection (``claim_request.send_waiting``), which ``CLIENT UNBLOCK`` ends as if its time were up.
A wake can come just before the worker sends its BLMOVE: the worker *arms* the bell before it
decides to wait, and a wake seen then makes it look without waiting; a wake that comes once it
is armed is repeated (``CLIENT UNBLOCK`` every BELL_UNBLOCK_GAP) until the wait it ends has begun,
or the worker is no longer armed."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from workqueue.connection import without_retries
from workqueue.settings import BELL_UNBLOCK_GAP, BELL_UNBLOCK_PATIENCE

log = logging.getLogger(__name__)


class IdleBell:
    """One worker's bell: ``rung`` from the listening thread, ``armed`` around each wait."""

    def __init__(self, connection: redis.Redis) -> None:
        self.connection = connection
        self._quick: redis.Redis | None = None  # the unblocks' client: no retries, in the listening thread
        #: The Redis client id of the connection the worker waits on (``CLIENT ID``, read with each wait).
        self.client_id: int | None = None
        #: Whether the worker's last claim noted it as idle (``lua/claim.lua``): the next one that finds
        #: work takes it out of the idle sets.
        self.noted = False
        self._armed = False
        self._rings = self._seen = 0
        self._unblock_refused = False

    @contextmanager
    def armed(self) -> Iterator[bool]:
        """Around a wait: whether a wake came since the last one (then the worker looks instead of
        waiting); a wake that comes inside ends the wait, even one not yet sent."""
        self._armed = True
        rings = self._rings
        try:
            yield rings != self._seen
        finally:
            self._seen = rings
            self._armed = False

    def rung(self) -> None:
        """A wake (in the listening thread): noted, and the worker's wait ended if it is in one."""
        self._rings += 1
        if not self._armed or self._unblock_refused:
            return
        give_up = time.monotonic() + BELL_UNBLOCK_PATIENCE
        while self._armed and time.monotonic() < give_up:
            client_id = self.client_id
            if client_id is not None and self._unblock(client_id):
                return
            time.sleep(BELL_UNBLOCK_GAP)

    def _unblock(self, client_id: int) -> bool:
        """``CLIENT UNBLOCK``: whether it ended a wait. Refused (an ACL), the bell only ends waits
        not yet sent, and the worker's looks find the rest."""
        if self._quick is None:
            self._quick = without_retries(self.connection, socket_timeout=1.0)
        try:
            return bool(self._quick.client_unblock(client_id))
        except redis.ResponseError as exc:
            self._unblock_refused = True
            log.warning("CLIENT UNBLOCK is refused (%s): an idle worker sees other queues' jobs at its next look", exc)
        except redis.RedisError as exc:
            log.debug("CLIENT UNBLOCK failed: %s", exc)
        return True
