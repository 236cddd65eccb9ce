"""Ends handed over: a worker running one job at a time writes its horse's job ends, several in one
request, while the horse goes on to the next job.

A horse that has run a job builds its end as ever (``job_steps.finish``: the result, the registries,
the execution's cleanup, the batch's count, under the guard "this run still holds the job") and,
instead of sending it and waiting for Redis, hands the transaction to its worker in its answer
(``job_steps.hand_ends_to_worker``). The worker holds it (:class:`HeldEnds`) and writes every end it
holds in one request (``guarded.run_group``, each under its own guard): before it claims again (a
worker holding jobs claimed ahead claims once per few jobs, so their ends go together), before it
would wait for a job, when it stops, once the oldest has waited ``WORKQUEUE_END_HOLD`` seconds, or
once MAX_HELD_ENDS are held. Then, as the horse would have: a written end is counted (the worker's
RQ counters and the statistics, in the worker's tally) and its dependents settled; a run handed back
meanwhile is noted (``meta["superseded"]``), not counted.

A job whose end is held is still "started", in the started registry with its execution: a worker
that dies holding it hands it back (the sweep), as it hands back the jobs it claimed ahead, and it
runs again; at-least-once, as ever. The jobs whose end needs the horse after it is written (a
progress report still held, a webhook, an RQ rate limit) and every failure are written by the
horse itself. A request Redis refuses for now (out of memory, away) has written nothing: the ends
stay held and go with the next try.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import redis

from workqueue import guarded, outage
from workqueue.guarded import SUPERSEDED, Guard, note_superseded
from workqueue.settings import END_HOLD_DEFAULT, END_HOLD_ENV
from workqueue.worker import job_steps

log = logging.getLogger(__name__)


def end_hold_setting(environ: dict[str, str] | os._Environ[str] = os.environ) -> float:
    """``WORKQUEUE_END_HOLD`` (seconds, 0 or more; 0: each horse writes its own ends) from
    ``environ``, or its default; ValueError saying what is wrong."""
    raw = environ.get(END_HOLD_ENV, "")
    try:
        hold = float(raw) if raw.strip() else END_HOLD_DEFAULT
    except ValueError:
        hold = -1.0
    if not 0 <= hold < float("inf"):
        raise ValueError(f"{END_HOLD_ENV}={raw!r}: expected seconds, 0 or more, e.g. 0.005 (0: not held)")
    return hold


class HeldEnds:
    """The job ends a worker holds for its horse, oldest first (see the module)."""

    def __init__(self, hold: float) -> None:
        self.hold = hold
        self._ends: list[dict[str, Any]] = []
        self._since = 0.0
        self._refused = ""
        self._writing = False

    def __len__(self) -> int:
        return len(self._ends)

    def add(self, ends: list[dict[str, Any]]) -> None:
        """Hold the ends a horse handed over (``job_steps.handed_ends``)."""
        if ends and not self._ends:
            self._since = time.monotonic()
        self._ends.extend(ends)

    def due(self) -> float | None:
        """When (``time.monotonic()``) the oldest end held must be written; None if none is held."""
        return self._since + self.hold if self._ends else None

    def write(self, connection: redis.Redis, worker_name: str, *, in_handler: bool = False) -> bool:
        """Write every end held, in one request, then settle each: a run handed back meanwhile is
        noted (``meta["superseded"]``), not recorded; the dependents of the others are settled.
        Whether none is held any more: False while Redis refuses them for now (they stay held).

        ``in_handler``: called from a signal handler (a stop at once), which may have interrupted
        a request on the worker's own connection: sent on another of its pool's, and not at all if
        it interrupted a write of these very ends (False: the sweep hands back what it did not write)."""
        if not self._ends:
            return True
        if self._writing:
            return False
        ends = self._ends
        client = connection if in_handler else guarded.direct_client(connection)
        self._writing = True
        try:
            return self._write(connection, client, ends, worker_name)
        finally:
            self._writing = False

    def request(self, connection: redis.Redis, worker_name: str) -> tuple[list[Any], Callable[[Any], None]] | None:
        """The ends held as one command to send in another request (the worker's next claim,
        ``job_steps.claim_many``), and what to hand its reply, which settles them as :meth:`write`
        does; None if none is held."""
        if not self._ends or self._writing:
            return None
        ends = self._ends
        transactions = _transactions(ends)
        command, read = guarded.group_command(transactions)
        self._writing = True

        def answered(reply: Any) -> None:
            self._writing = False
            if isinstance(reply, redis.exceptions.NoScriptError):  # a Redis that lost its scripts
                self.write(connection, worker_name)  # which loads them
            elif isinstance(reply, redis.RedisError):
                self._failed(connection, guarded.direct_client(connection), ends, transactions, worker_name, reply)
            elif not isinstance(reply, BaseException):  # else cut short (a stop): kept, as unanswered
                self._done(connection, ends, read(reply), worker_name)

        return command, answered

    def not_sent(self) -> None:
        """The request :meth:`request` gave may not have gone (the claim failed first): the ends it
        had not answered for stay held, for the next request."""
        self._writing = False

    def _write(
        self, connection: redis.Redis, client: redis.Redis, ends: list[dict[str, Any]], worker_name: str
    ) -> bool:
        transactions = _transactions(ends)
        try:
            answers = guarded.run_group(client, transactions)
        except redis.RedisError as exc:
            return self._failed(connection, client, ends, transactions, worker_name, exc)
        self._done(connection, ends, answers, worker_name)
        return True

    def _done(self, connection: redis.Redis, ends: list[dict[str, Any]], answers: list[Any], worker_name: str) -> None:
        self._ends = self._ends[len(ends) :]  # (none came meanwhile: the worker's one thread adds them)
        self._refused = ""
        for end, replies in zip(ends, answers, strict=True):
            self._settle(connection, end, replies, worker_name)

    def _failed(
        self,
        connection: redis.Redis,
        client: redis.Redis,
        ends: list[dict[str, Any]],
        transactions: list[tuple[Guard, Any]],
        worker_name: str,
        exc: redis.RedisError,
    ) -> bool:
        """A request of ``ends`` that failed with ``exc``: refused for now (kept: False), or one
        end's own fault, say (each then written alone: :meth:`_one_by_one`)."""
        if outage.is_outage(exc):
            if outage.describe(exc) != self._refused:  # once per outage, not at every try
                self._refused = outage.describe(exc)
                log.warning("Redis refuses the ends of %d job(s) for now (%s); trying again", len(ends), exc)
            return False
        return self._one_by_one(connection, client, transactions, worker_name)

    def _one_by_one(
        self, connection: redis.Redis, client: redis.Redis, transactions: list[tuple[Guard, Any]], worker_name: str
    ) -> bool:
        """Each end written on its own, after a request of several failed not for an outage (one
        end's own fault, say), so that it fails no neighbour. One that fails alone too is logged and
        left started, as a horse's end that could not be written (RQ's cleanup of the started
        registry fails it once its execution lapses). An outage meanwhile keeps the rest held."""
        ends = self._ends
        for at, (end, (guard, words)) in enumerate(zip(ends, transactions, strict=True)):
            replies: Any
            try:
                replies = guarded.run_words(client, guard, words)
            except redis.RedisError as exc:
                if outage.is_outage(exc):
                    self._ends = ends[at:]
                    return False
                log.exception("could not write the end of job %s", end["job"])
                replies = _FAILED
            self._settle(connection, end, replies, worker_name)
        self._ends = []
        return True

    def _settle(self, connection: redis.Redis, end: dict[str, Any], replies: Any, worker_name: str) -> None:
        if replies is SUPERSEDED:
            note_superseded(connection, end["job"], end["execution"], worker_name, "finished")
        elif replies is not _FAILED:
            job_steps.count_end(connection, end["count"])
            job_steps.settle_end(connection, end["job"], replies)


def _transactions(ends: list[dict[str, Any]]) -> list[tuple[Guard, Any]]:
    """Each end as ``guarded.run_group`` takes it: its guard, and its transaction's words."""
    return [(Guard(end["guard"][0], end["guard"][1], end["guard"][3:]), end["words"]) for end in ends]


#: What :meth:`HeldEnds._one_by_one` settles for an end that could not be written.
_FAILED = object()
