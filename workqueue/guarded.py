"""Writes made only while a run still holds its job, whole or not at all.

A job's end, its failure, its progress and a dead worker's hand-back are each one transaction,
sent as one Lua script that first checks a guard (:class:`Guard`): "this run still holds the job"
(its execution is in the started registry) or "this caller claims the dead run" (its removal of
the execution succeeds). A run whose job was handed back meanwhile, or a second sweep of the same
dead run, then writes nothing. A write Redis refuses for now (out of memory, a failed save, a
replica) ends the script before anything is written, and :func:`run_guarded` tries it again.
Used by the worker (``worker.job_steps``) and by the recovery sweep.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import redis
from redis.commands.core import Script
from rq.job import Job

from workqueue import batches, bells, jobs, jobstats, limits, lua, outage

log = logging.getLogger(__name__)

_direct_clients: dict[tuple[int, int], redis.Redis] = {}


def direct_client(connection: redis.Redis) -> redis.Redis:
    """A client of ``connection``'s pool that keeps one connection of its own, for a job's two
    requests: taking a connection from the pool and giving it back costs more than a no-op job's
    work (redis-py checks the call's arguments for deprecations each time). One per process (a
    forked horse must not write on its worker's socket), and per pool."""
    key = (os.getpid(), id(connection.connection_pool))
    client = _direct_clients.get(key)
    if client is None:
        client = _direct_clients[key] = redis.Redis(
            connection_pool=connection.connection_pool, single_connection_client=True
        )
    return client


# Runs a transaction's queued commands in one script, in order and atomically as MULTI/EXEC
# would, and answers their replies: one command for redis-py to pack and one reply to parse, where
# a transaction has a score of each. The scripts a transaction may EVAL are compiled in as
# functions, called by their SHA1.
#
# Guarded: ARGV starts with a mode, a started registry's key, a count n and n of its members (the
# job's executions as ``<job id>:<execution id>``). Mode 'holds': the commands run only if one of
# those executions is still in the registry (the run they record still holds the job: a horse
# ending its job, or storing its progress). Mode 'claim': only if this call removes one of them
# (of several sweeps that find the same dead execution, exactly one hands its job back). Otherwise
# nothing is written and the answer is {'superseded'}. Mode '': no guard.
#
# Refused whole or run whole: a command Redis refuses because it cannot write (OOM over maxmemory,
# MISCONF after a failed save, READONLY on a replica) ends the script with that error. Redis
# refuses a script's write for OOM only while the script has written nothing yet, and MISCONF and
# READONLY every write, so such a refusal leaves nothing written, and the caller tries again. Any
# other refused command (a key of the wrong type, say) does not stop the rest.
# ARGV after the guard: each command as its number of words, then its words (an EVAL's script by
# its SHA1). Several such transactions can go in one request, each under its own guard
# (``lua/guarded_group.lua``, :func:`run_group`): a horse's group commit (``worker.commits``).
_RUN_LOOP = lua.script("guarded_run")
#: A job's meta replaced only if it is still what the writer last knew (``worker.progress``).
META_SWAP_SCRIPT = lua.script("meta_swap")
#: The scripts a transaction sent through :func:`_run_queued` may EVAL, by their SHA1.
_RUNNABLE = {
    hashlib.sha1(text.encode()).hexdigest(): text
    for text in (
        batches.END_SCRIPT,
        bells.RING_SCRIPT,
        jobstats.RECORD_END_SCRIPT,
        limits.RELEASE_SCRIPT,
        jobs.COMPACT_SCRIPT,
        jobs.SUCCESS_SCRIPT,
        META_SWAP_SCRIPT,
    )
}
#: Their SHA1s by their text (hashing a script's text for each job's end cost more than its lookup).
_RUNNABLE_SHAS = {text: sha for sha, text in _RUNNABLE.items()}
_GUARDED = (
    "local scripts = {}\n"
    + "".join(f"scripts['{sha}'] = function(KEYS, ARGV)\n{text}\nend\n" for sha, text in _RUNNABLE.items())
    + f"local function guarded(ARGV, o, last)\n{_RUN_LOOP}\nend\n"
)
_RUN = _GUARDED + "return guarded(ARGV, 0, #ARGV)\n"
_run_script: Script | None = None
#: Several guarded transactions in one request: each is run as :data:`_RUN` runs one (``run_group``).
_GROUP = _GUARDED + lua.script("guarded_group")
_group_script: Script | None = None
_RUN_SHA, _GROUP_SHA = (hashlib.sha1(text.encode()).hexdigest() for text in (_RUN, _GROUP))

#: What :func:`run_guarded` answers when its guard did not hold: nothing was written.
SUPERSEDED = None


class Guard:
    """Which run a guarded write belongs to: ``mode`` 'holds' (the writes are made only while one
    of ``members`` is in the started registry ``registry``) or 'claim' (only by the caller whose
    call removes one of them)."""

    __slots__ = ("members", "mode", "registry")

    def __init__(self, mode: str, registry: str, members: Sequence[str]) -> None:
        self.mode, self.registry, self.members = mode, registry, list(members)

    @classmethod
    def holds(cls, job: Job, execution_id: str) -> Guard:
        """The run of ``job`` as ``execution_id`` still holds it."""
        return cls("holds", job.started_job_registry.key, [f"{job.id}:{execution_id}"])

    def words(self) -> list[Any]:
        return [self.mode, self.registry, len(self.members), *self.members]


_NO_GUARD = Guard("", "", [])


def runnable_sha(script: str) -> str:
    """The SHA1 by which a transaction's words EVAL ``script``, one of those :data:`_RUN` can run."""
    return _RUNNABLE_SHAS[script]


def transaction_words(pipe: redis.client.Pipeline) -> list[Any] | None:
    """The commands queued on the transaction ``pipe`` as :data:`_RUN` takes them after its guard
    (the pipe is then reset), or None (``pipe`` untouched) if one EVALs a script :data:`_RUN` cannot run."""
    words: list[Any] = []
    for args, _options in pipe.command_stack:
        if args[0] == "EVAL":
            sha = _RUNNABLE_SHAS.get(args[1])
            if sha is None:  # a script this one cannot run
                return None
            args = ("EVAL", sha, *args[2:])
        words.append(len(args))
        words.extend(args)
    pipe.reset()
    return words


def _answer(replies: list[Any]) -> list[Any] | None:
    return SUPERSEDED if replies == [b"superseded"] else replies


def _run_queued(connection: redis.Redis, pipe: redis.client.Pipeline, guard: Guard = _NO_GUARD) -> list[Any] | None:
    """The replies of the commands queued on the transaction ``pipe``, sent over ``connection``
    as one script (errors among them as exception objects, as ``execute(raise_on_error=False)``);
    SUPERSEDED (None), with nothing written, if ``guard`` did not hold. A write refused for want of
    memory (or a failed save) raises, with nothing written."""
    words = transaction_words(pipe)
    if words is None:  # the transaction as it is
        return _run_unknown(connection, pipe, guard)
    return run_words(connection, guard, words)


def run_words(connection: redis.Redis, guard: Guard, words: list[Any]) -> list[Any] | None:
    """:func:`_run_queued` for a transaction already turned into ``words`` (:func:`transaction_words`)."""
    global _run_script
    if _run_script is None:
        _run_script = connection.register_script(_RUN)
    return _answer(_run_script(keys=[], args=guard.words() + words, client=connection))


def run_group(connection: redis.Redis, transactions: Sequence[tuple[Guard, list[Any]]]) -> list[list[Any] | None]:
    """Several guarded transactions (each a guard and its :func:`transaction_words`) in one request
    (``lua/guarded_group.lua``): each written only if its own guard holds, in order; the answer of
    each as :func:`_run_queued` gives it. A write Redis refuses for now raises, nothing written (the
    refusal can only be the request's first write): the caller tries them all again."""
    global _group_script
    if len(transactions) == 1:
        return [run_words(connection, *transactions[0])]
    if _group_script is None:
        _group_script = connection.register_script(_GROUP)
    answers = _group_script(keys=[], args=_group_args(transactions), client=connection)
    return [_answer(replies) for replies in answers]


def _group_args(transactions: Sequence[tuple[Guard, list[Any]]]) -> list[Any]:
    args: list[Any] = [len(transactions)]
    for guard, words in transactions:
        guard_words = guard.words()
        args.append(len(guard_words) + len(words))
        args += guard_words
        args += words
    return args


def group_command(
    transactions: Sequence[tuple[Guard, list[Any]]],
) -> tuple[list[Any], Callable[[Any], list[list[Any] | None]]]:
    """What :func:`run_group` sends, as one command to send beside others in a request (an EVALSHA:
    a Redis that lost its scripts answers NoScriptError, and :func:`run_group` then loads them),
    and how to read its reply into the answers :func:`run_group` gives."""
    if len(transactions) == 1:
        guard, words = transactions[0]
        return ["EVALSHA", _RUN_SHA, 0, *guard.words(), *words], lambda reply: [_answer(reply)]
    return ["EVALSHA", _GROUP_SHA, 0, *_group_args(transactions)], lambda reply: [_answer(r) for r in reply]


def _run_unknown(connection: redis.Redis, pipe: redis.client.Pipeline, guard: Guard) -> list[Any] | None:
    """A transaction with a script :data:`_RUN` does not know: its guard first, then the
    transaction (two steps: rare, RQ's own paths only)."""
    if guard.mode:
        empty = connection.pipeline()
        if _run_queued(connection, empty, guard) is SUPERSEDED:
            pipe.reset()
            return SUPERSEDED
    return pipe.execute(raise_on_error=False)


#: Where this process's ends go instead, if anywhere (:func:`send_ends_through`), with the process's id.
_group: tuple[int, Callable[[redis.Redis, Guard, list[Any]], list[Any] | None]] | None = None


def send_ends_through(send: Callable[[redis.Redis, Guard, list[Any]], list[Any] | None] | None) -> None:
    """From now on, in this process, :func:`run_guarded` (a job's end, its failure, its progress)
    hands its transaction to ``send(client, guard, words)`` (``words``: see :func:`transaction_words`),
    which answers as :func:`run_words` would: a horse running several jobs at once sends the writes
    ready at the same moment in one request (``worker.commits``). None: each sent on its own again.
    A forked child sends its own."""
    global _group
    _group = None if send is None else (os.getpid(), send)


def run_guarded(
    connection: redis.Redis, build: Any, guard: Guard, *, what: str, patience: float | None = None
) -> list[Any] | None:
    """Queue a transaction with ``build(pipe)`` and run it under ``guard``, in one atomic step;
    while Redis refuses it (out of memory, a failed save, away), wait and build it again, for at
    most ``patience`` seconds (None: as long as it takes). The replies, or SUPERSEDED."""
    delay, deadline, warned = 0.2, None if patience is None else time.monotonic() + patience, False
    group = _group[1] if _group is not None and _group[0] == os.getpid() else None
    while True:
        with connection.pipeline() as pipe:
            build(pipe)
            try:
                client = direct_client(connection)  # which connects, if it is the process's first request
                if group is not None and (words := transaction_words(pipe)) is not None:
                    return group(client, guard, words)
                return _run_queued(client, pipe, guard)
            except redis.RedisError as exc:
                if not outage.is_outage(exc) or (deadline is not None and time.monotonic() + delay > deadline):
                    raise
                if not warned:
                    log.warning("Redis refuses %s for now (%s); trying again until it accepts it", what, exc)
                    warned = True
        time.sleep(delay)
        delay = min(delay * 2, 5.0)


def note_superseded(connection: redis.Redis, job_id: str, execution_id: str, worker_name: str, outcome: str) -> None:
    """Record on the job (``meta["superseded"]``) that a run of it ended after its job had been
    handed to another run: that end is not the job's outcome. Never raises."""
    log.warning(
        "job %s: the run %s on %s ended (%s) after the job had been handed back; its end is not recorded",
        job_id,
        execution_id,
        worker_name,
        outcome,
    )
    key = Job.key_for(job_id)
    note = {
        "execution": execution_id,
        "worker": worker_name,
        "outcome": str(outcome)[:500],
        "at": datetime.now(UTC).isoformat(),
    }
    try:
        with connection.pipeline() as pipe:
            for _ in range(5):
                try:
                    pipe.watch(key)
                    raw = pipe.hget(key, "meta")
                    if not pipe.exists(key):
                        return
                    meta = json.loads(raw) if raw else {}
                    if not isinstance(meta, dict):
                        return
                    meta.setdefault("superseded", []).append(note)
                    pipe.multi()
                    pipe.hset(key, "meta", json.dumps(meta))
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue
    except (redis.RedisError, ValueError):
        log.warning("could not note the superseded run of job %s", job_id, exc_info=True)


def prepare(client: redis.Redis, groups: bool = False) -> None:
    """Load the guarded-run script on ``client``'s server (a job's first end then waits for nothing),
    and the group's if ends are sent in groups (:func:`send_ends_through`, or ``groups``: a worker
    writing the ends its horse hands over, ``worker.held_ends``)."""
    global _run_script, _group_script
    _run_script = _run_script or client.register_script(_RUN)
    client.script_load(_run_script.script)
    if _group is not None or groups:
        _group_script = _group_script or client.register_script(_GROUP)
        client.script_load(_group_script.script)
