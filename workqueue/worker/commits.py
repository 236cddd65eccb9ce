"""Group commit: a horse running several jobs at once (``--concurrency N``) sends the ends that are
ready at the same moment in one request to Redis, not one request each.

Each job's thread builds its end (or failure) as ever and hands the transaction, with its guard, to
the horse's :class:`Committer`, then waits. The committer's own thread sends whatever is waiting the
moment it is free: one end alone when nothing else is ready, otherwise all that came while the
previous request was in flight, together (``guarded.run_group``: one script, each end under its own
guard, so a superseded run writes nothing while its neighbours are written). Nothing waits on
purpose. A request Redis refuses for now (out of memory, a failed save) has written nothing: each
thread is told, waits and tries its end again (``guarded.run_guarded``), so the ends regroup. A
thread answers its worker only once its own end is written, so a horse that crashes before that
hands its job back, and after it the job is finished: at-least-once as with one job at a time.

The request is sent from the committer's thread, never from a job's: a stop raised in a job's
thread (``horse_side.JobStopped``) can then never cut a request carrying its neighbours' ends.
"""

from __future__ import annotations

import copy
import logging
import threading
from typing import Any

import redis

from workqueue import guarded, outage

log = logging.getLogger(__name__)

#: The most ends in one request (a horse has at most ``--concurrency`` waiting).
MAX_GROUP = 64


class _End:
    """One transaction waiting to be sent, then its answer."""

    __slots__ = ("answer", "done", "error", "guard", "words")

    def __init__(self, guard: guarded.Guard, words: list[Any]) -> None:
        self.guard, self.words = guard, words
        self.answer: list[Any] | None = None
        self.error: BaseException | None = None
        self.done = threading.Lock()
        self.done.acquire()  # released once answered


class Committer:
    """Sends the ends handed to :meth:`send` from its own thread, those waiting together (see the
    module). ``requests`` and ``ends`` count what it has sent, for its log line and the tests."""

    def __init__(self) -> None:
        self._waiting: list[_End] = []
        self._ready = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._client: redis.Redis | None = None
        self.requests = 0
        self.ends = 0

    def send(self, client: redis.Redis, guard: guarded.Guard, words: list[Any]) -> list[Any] | None:
        """Write one transaction (``guarded.transaction_words``) under ``guard``, with whatever else
        is waiting; its replies, or ``guarded.SUPERSEDED``. Raises what the request raised (a refusal
        for now: nothing was written), a copy for each thread."""
        end = _End(guard, words)
        with self._ready:
            self._client = client
            if self._thread is None:  # the first end starts the thread (none at import, none in the worker)
                self._thread = threading.Thread(target=self._serve, name="group commit", daemon=True)
                self._thread.start()
            self._waiting.append(end)
            self._ready.notify()
        end.done.acquire()  # a stop raised in this thread is delivered only once this returns
        if end.error is not None:
            raise copy.copy(end.error)
        return end.answer

    def _serve(self) -> None:
        while True:
            with self._ready:
                while not self._waiting:
                    self._ready.wait()
            self._send_waiting()

    def _send_waiting(self) -> None:
        """Send what is waiting (up to MAX_GROUP) in one request, then answer each waiting thread."""
        with self._ready:
            group, self._waiting = self._waiting[:MAX_GROUP], self._waiting[MAX_GROUP:]
            client = self._client
        if not group:
            return
        assert client is not None  # set by the send that made the group
        try:
            answers = guarded.run_group(client, [(end.guard, end.words) for end in group])
        except redis.RedisError as exc:
            if len(group) == 1 or outage.is_outage(exc):  # nothing written: each thread tries again
                for end in group:
                    end.error = exc
            else:  # not a refusal: one end's own fault, say; each alone, so that it fails no neighbour
                self._one_by_one(client, group)
        except BaseException as exc:  # every waiting thread is told, whatever it is
            for end in group:
                end.error = exc
        else:
            for end, answer in zip(group, answers, strict=True):
                end.answer = answer
        self.requests += 1
        self.ends += len(group)
        if len(group) > 1:
            log.debug("group commit: %d in one request (%d in %d so far)", len(group), self.ends, self.requests)
        for end in group:
            end.done.release()

    def _one_by_one(self, client: redis.Redis, group: list[_End]) -> None:
        for end in group:
            try:
                end.answer = guarded.run_words(client, end.guard, end.words)
            except BaseException as exc:
                end.error = exc
            self.requests += 1
