"""Per-key rate and concurrency limits, enforced where jobs are handed out.

A job may carry a *limit key* (``domain:example.com``): the task derives it from its parameters
(``task_def.Task.limit_key``; ``scrape`` gives ``domain:<host>``), or its enqueue names one
(``--limit-key K``). A *rule* is set per key or per glob pattern (``*``, ``?``, ``[...]``):
``domain:*`` at 2/s and 4 at a time gives *each* matching key its own 2/s and 4 slots, not the keys
together. An exact rule wins over patterns; of several matching patterns the longest wins. A key
no rule matches keeps to its task's ``default_limit`` if it has one, else is unlimited.

Everything lives in Redis (keys under ``workqueue:limit:``), so rules change at runtime and hold
across all workers on all machines. The claim script (``lua/claim.lua``) enforces them: a job whose
key is at its limit is not started, failed or retried, but *held* off the queue in a FIFO list per
queue and key, and the jobs behind it go on (no head-of-line blocking). Each claim first releases,
in order, held jobs whose key has room again, to the front of their queue. A concurrency slot is a
*lease* (the run's execution in a sorted set scored by its expiry), extended by the worker's
heartbeat and removed when the job ends (the end's transaction, ``RELEASE_SCRIPT``) or when the
recovery sweep hands back a dead worker's job (``LIMIT_DEAD_GRACE`` later); an expired lease is
ignored, so a slot is never leaked. A rate of N per P seconds is a sliding window of the key's
starts on Redis's clock (with ``LIMIT_RATE_MARGIN``), and the job's first request on the wire is
paced by a window of its own (``pace_current_job``), so start-up jitter cannot bunch requests.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis
from rq import Queue

from workqueue.errors import BadInput
from workqueue.replies import decoded_map, decoded_members
from workqueue.settings import LIMIT_KEY_MAX, LIMIT_POLL, LIMIT_RATE_MARGIN, LIMIT_RULES_FRESH

PREFIX = "workqueue:limit:"
#: Rules: key or pattern -> JSON {"rate": N, "per": seconds, "concurrency": C} (0: no bound).
RULES_KEY = PREFIX + "rules"
#: The patterns among the rules: glob -> the same as an anchored Lua pattern (for the claim script).
PATTERNS_KEY = PREFIX + "patterns"
#: Every key a job carried lately: key -> when it was last seen (epoch seconds), for ``limit list``.
KEYS_KEY = PREFIX + "keys"

#: How long a key's lease set outlives its last start or heartbeat (seconds; mirrored in lua/claim.lua):
#: longer than any lease, which the claims prune as they expire.
LEASES_TTL = 86400

#: The job hash fields the claim script reads (written from the job's meta, ``job_fields``).
KEY_FIELD, DEFAULT_FIELD = "limit_key", "limit_default"

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
#: A rate as typed: N (at most 9 digits) per second, minute or hour. RATE_PATTERN: the valid ones.
_RATE = re.compile(r"(\d{1,9})/([smh])")
RATE_PATTERN = "^[1-9][0-9]{0,8}/[smh]$"
#: The most jobs of one key a rule lets run at once.
CONCURRENCY_MAX = 1_000_000
_GLOB_CHARS = set("*?[")
#: What a job's limit key may hold (1 to LIMIT_KEY_MAX characters), and a rule's key or pattern.
KEY_PATTERN = re.compile(r"[A-Za-z0-9_.:@/+=%~-]{1,%d}".replace("%d", str(LIMIT_KEY_MAX)))
RULE_PATTERN = re.compile(r"[A-Za-z0-9_.:@/+=%~*?!\[\]-]{1,%d}".replace("%d", str(LIMIT_KEY_MAX)))


def leases_key(key: str) -> str:
    return f"{PREFIX}leases:{key}"


def starts_key(key: str) -> str:
    return f"{PREFIX}starts:{key}"


def held_key(queue_key: str, key: str) -> str:
    return f"{PREFIX}held:{queue_key}:{key}"


def waiting_key(queue_key: str) -> str:
    return f"{PREFIX}waiting:{queue_key}"


@dataclass(frozen=True)
class Rule:
    """A limit on a key or pattern: at most ``rate`` starts per ``per`` seconds, and at most
    ``concurrency`` jobs running at once (0: no bound of that kind)."""

    pattern: str
    rate: int = 0
    per: float = 1.0
    concurrency: int = 0

    def describe_rate(self) -> str:
        if not self.rate:
            return "-"
        unit = {1.0: "s", 60.0: "m", 3600.0: "h"}.get(self.per)
        return f"{self.rate}/{unit}" if unit else f"{self.rate}/{self.per:g}s"

    def describe(self) -> str:
        return f"rate {self.describe_rate()}, concurrency {self.concurrency or '-'}"

    def as_json(self) -> dict[str, Any]:
        return {"key": self.pattern, "rate": self.describe_rate() if self.rate else None,
                "concurrency": self.concurrency or None}  # fmt: skip


@dataclass(frozen=True)
class KeyState:
    """One actual key as it stands: the limit that applies (None: unlimited), its running jobs
    (live leases), its jobs waiting for room, and its starts in the current rate window."""

    key: str
    rule: Rule | None
    source: str  # the rule's pattern, "default" (the task's default limit) or "" (unlimited)
    running: int
    waiting: int
    recent_starts: int

    def as_json(self) -> dict[str, Any]:
        return {"key": self.key, "rule": self.source or None,
                "rate": self.rule.describe_rate() if self.rule and self.rule.rate else None,
                "concurrency": (self.rule.concurrency or None) if self.rule else None,
                "slots_in_use": self.running, "waiting": self.waiting}  # fmt: skip


def parse_rate(text: str) -> tuple[int, float]:
    """``"2/s"`` as (2, 1.0): N per second, minute (``m``) or hour (``h``), N a whole number >= 1."""
    match = _RATE.fullmatch(text or "")
    if not match or (match.group(1).startswith("0") and match.group(1) != "0"):
        raise BadInput(f"rate {text!r}: expected N/s, N/m or N/h with N a whole number, e.g. 2/s", "rate")
    count = int(match.group(1))
    if count < 1:
        raise BadInput(f"rate {text!r}: must allow at least 1 request (e.g. 1/m), not {count}", "rate")
    return count, _UNITS[match.group(2)]


def check_key(key: Any, what: str = "limit key", *, pattern: bool = False) -> str:
    """``key`` if it is usable as a job's limit key (``KEY_PATTERN``) or, with ``pattern``, as a
    rule's key or glob (``RULE_PATTERN``); raises BadInput."""
    if not isinstance(key, str) or not (RULE_PATTERN if pattern else KEY_PATTERN).fullmatch(key):
        allowed = "letters, digits and _ . : @ / + = % ~ -" + (", with * ? [...] for patterns" if pattern else "")
        raise BadInput(
            f"invalid {what} {key!r}: use 1 to {LIMIT_KEY_MAX} {allowed}, e.g. domain:example.com",
            "key" if pattern else "limit_key",
        )
    return key


def make_rule(pattern: str, rate: str | None = None, concurrency: int | None = None) -> Rule:
    """A validated rule from the command line's words; raises BadInput (one line, what to change)."""
    check_key(pattern, "limit key or pattern", pattern=True)
    if rate is None and concurrency is None:
        raise BadInput("limit set: give --rate N/s|N/m, --concurrency N or both", "rate")
    count, per = parse_rate(rate) if rate is not None else (0, 1.0)
    if concurrency is not None and (isinstance(concurrency, bool) or not isinstance(concurrency, int)):
        raise BadInput(f"concurrency {concurrency!r}: expected a whole number >= 1", "concurrency")
    if concurrency is not None and not 1 <= concurrency <= CONCURRENCY_MAX:
        raise BadInput(f"concurrency {concurrency}: must be at least 1, at most {CONCURRENCY_MAX:,}", "concurrency")
    return Rule(pattern, count, per, concurrency or 0)


def glob_to_lua(glob: str) -> str:
    """The anchored Lua pattern that matches what the glob ``glob`` matches (``*``, ``?``, ``[...]``
    with ``[!...]``); every other character literally."""
    out, i = ["^"], 0
    while i < len(glob):
        c = glob[i]
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[" and "]" in glob[i + 1 :] and glob[i + 1 : glob.index("]", i + 1)] not in ("", "!"):
            end = glob.index("]", i + 1)
            body = glob[i + 1 : end]
            negate = body.startswith("!")
            body = body[1:] if negate else body
            escaped = "".join(ch if ch.isalnum() or ch == "-" else "%" + ch for ch in body)
            out.append("[" + ("^" if negate else "") + escaped + "]")
            i = end
        else:
            out.append(c if c.isalnum() else "%" + c)
        i += 1
    return "".join(out) + "$"


def is_pattern(key: str) -> bool:
    return bool(_GLOB_CHARS & set(key))


def set_rule(connection: redis.Redis, rule: Rule) -> None:
    """Store ``rule`` (replacing one on the same key or pattern); it holds from the next claim."""
    value = json.dumps({"rate": rule.rate, "per": rule.per, "concurrency": rule.concurrency})
    with connection.pipeline(transaction=True) as pipe:
        pipe.hset(RULES_KEY, rule.pattern, value)
        if is_pattern(rule.pattern):
            pipe.hset(PATTERNS_KEY, rule.pattern, glob_to_lua(rule.pattern))
        pipe.execute()


def remove_rule(connection: redis.Redis, pattern: str) -> Rule:
    """Remove the rule on ``pattern`` (its held jobs are released as their key has room, now by
    whatever else applies); BadInput if there is none."""
    existing = {r.pattern: r for r in rules(connection)}
    if pattern not in existing:
        known = ", ".join(sorted(existing)) or "none"
        raise BadInput(f"no limit on {pattern!r} (limits: {known})", "key")
    with connection.pipeline(transaction=True) as pipe:
        pipe.hdel(RULES_KEY, pattern)
        pipe.hdel(PATTERNS_KEY, pattern)
        for queue in Queue.all(connection=connection):  # its held keys are looked at again at the next claim
            for key in _waiting_keys(connection, queue.key):
                pipe.zadd(waiting_key(queue.key), {key: 0}, xx=True)
        pipe.execute()
    return existing[pattern]


def _waiting_keys(connection: redis.Redis, queue_key: str) -> list[str]:
    return decoded_members(connection.zrange(waiting_key(queue_key), 0, -1))


def rules(connection: redis.Redis) -> list[Rule]:
    """Every rule, sorted by key or pattern."""
    out = []
    for pattern, raw in sorted(decoded_map(connection.hgetall(RULES_KEY)).items()):
        try:
            data = json.loads(raw)
            out.append(Rule(pattern, int(data.get("rate") or 0), float(data.get("per") or 1.0),
                            int(data.get("concurrency") or 0)))  # fmt: skip
        except (ValueError, TypeError, AttributeError):
            continue  # written by something else: the claim script ignores it too
    return out


def rule_for(all_rules: list[Rule], key: str) -> Rule | None:
    """The rule that applies to ``key``: its exact one, else the longest matching pattern (as the
    claim script chooses)."""
    best: Rule | None = None
    for rule in all_rules:
        if rule.pattern == key:
            return rule
        longer = best is None or (len(rule.pattern), best.pattern) > (len(best.pattern), rule.pattern)
        if longer and is_pattern(rule.pattern) and re.match(_lua_to_regex(glob_to_lua(rule.pattern)), key):
            best = rule
    return best


def _lua_to_regex(lua_pattern: str) -> str:
    out, i = [], 0
    while i < len(lua_pattern):
        c = lua_pattern[i]
        if c == "%":
            out.append(re.escape(lua_pattern[i + 1]))
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out).replace("$", r"\Z")


def parse_default(raw: str | None) -> Rule | None:
    """A job's default limit as stored (``"rate per concurrency"``), or None."""
    parts = (raw or "").split()
    if len(parts) != 3:
        return None
    try:
        rate, per, concurrency = int(float(parts[0])), float(parts[1]), int(parts[2])
    except ValueError:
        return None
    return Rule("default", rate, per, concurrency) if rate or concurrency else None


def default_text(limit: tuple[float, float, int] | None) -> str | None:
    """``Task.default_limit`` as stored on a job (None: no default)."""
    if not limit:
        return None
    rate, per, concurrency = limit
    return f"{int(rate)} {float(per):g} {int(concurrency)}"


def job_meta(key: str | None, default: tuple[float, float, int] | None) -> dict[str, Any]:
    """What a job's meta carries about its limit (none of it when it has no key)."""
    if not key:
        return {}
    text = default_text(default)
    return {KEY_FIELD: key, DEFAULT_FIELD: text} if text else {KEY_FIELD: key}


def job_fields(meta: Mapping[str, Any]) -> dict[str, str]:
    """The job hash fields the claim script reads, from the job's ``meta`` (``CatalogueJob.to_dict``)."""
    key = meta.get(KEY_FIELD) if isinstance(meta, Mapping) else None
    if not isinstance(key, str) or not key:
        return {}
    default = meta.get(DEFAULT_FIELD)
    return {KEY_FIELD: key, DEFAULT_FIELD: default if isinstance(default, str) else ""}


def job_key(job: Any) -> str | None:
    """The limit key a job object carries (its meta), or None."""
    key = (getattr(job, "meta", None) or {}).get(KEY_FIELD)
    return key if isinstance(key, str) and key else None


# Removes a run's concurrency lease when its job ends, and has the claims look at once at the jobs
# held for its key in its queue. KEYS: the job's hash. ARGV: the run (``<job id>:<execution id>``),
# the job's limit key if known ('' reads it from the hash), its queue's key if known ('' likewise),
# and a grace in seconds: 0 removes the lease, more lets it end that long from now instead.
RELEASE_SCRIPT = """
local key, queue, grace = ARGV[2], ARGV[3], tonumber(ARGV[4]) or 0
if key == '' then key = redis.call('HGET', KEYS[1], 'limit_key') or '' end
if key == '' then return 0 end
if queue == '' then
  local origin = redis.call('HGET', KEYS[1], 'origin')
  if origin then queue = 'rq:queue:' .. origin end
end
local leases = 'workqueue:limit:leases:' .. key
if grace > 0 then
  local clock = redis.call('TIME')
  local until_ = tonumber(clock[1]) + tonumber(clock[2]) / 1000000 + grace
  redis.call('ZADD', leases, 'XX', until_, ARGV[1])
  if queue ~= '' then redis.call('ZADD', 'workqueue:limit:waiting:' .. queue, 'XX', until_, key) end
  return 1
end
local removed = redis.call('ZREM', leases, ARGV[1])
if queue ~= '' then redis.call('ZADD', 'workqueue:limit:waiting:' .. queue, 'XX', 0, key) end
return removed
"""


def queue_release(
    pipe: redis.client.Pipeline,
    job_hash_key: str,
    job_id: str,
    execution_id: str,
    key: str | None = None,
    queue_key: str = "",
    grace: float = 0.0,
) -> None:
    """Queue on ``pipe`` the end of the run's lease (a no-op for a job without a limit key): now, or
    ``grace`` seconds from now (a dead run's: the site may still be serving its last request)."""
    pipe.eval(RELEASE_SCRIPT, 1, job_hash_key, f"{job_id}:{execution_id}", key or "", queue_key, grace)


def queue_extend(pipe: redis.client.Pipeline, key: str, job_id: str, execution_id: str, ttl: float) -> None:
    """Queue on ``pipe`` the extension of a live run's lease by ``ttl`` seconds from now: its
    worker's heartbeat. Only an existing lease is extended (one already released stays so)."""
    pipe.zadd(leases_key(key), {f"{job_id}:{execution_id}": time.time() + ttl}, xx=True)
    pipe.expire(leases_key(key), LEASES_TTL)


def forget_held(connection: redis.Redis, job: Any) -> None:
    """Take a held job out of its key's waiting list (it is being cancelled)."""
    key = job_key(job)
    if key and getattr(job, "origin", None):
        connection.lrem(held_key(Queue(job.origin, connection=connection).key, key), 0, job.id)


def next_due(connection: redis.Redis, queue_keys: list[str], now: float) -> float | None:
    """Seconds until the first of these queues' held keys is due a look (0: now); None: none held."""
    with connection.pipeline(transaction=False) as pipe:
        for queue_key in queue_keys:
            pipe.zrange(waiting_key(queue_key), 0, 0, withscores=True)
        replies = pipe.execute()
    scores = [float(reply[0][1]) for reply in replies if reply]
    return max(0.0, min(scores) - now) if scores else None


def held_counts(connection: redis.Redis, queue_key: str) -> dict[str, int]:
    """Per key, how many jobs of this queue wait for room."""
    keys = _waiting_keys(connection, queue_key)
    with connection.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.llen(held_key(queue_key, key))
        lengths = pipe.execute()
    return {key: n for key, n in zip(keys, lengths, strict=True) if n}


def held_ids(connection: redis.Redis, queue_key: str) -> list[str]:
    """The ids of this queue's jobs held by a limit, each key's in order."""
    with connection.pipeline(transaction=False) as pipe:
        for key in _waiting_keys(connection, queue_key):
            pipe.lrange(held_key(queue_key, key), 0, -1)
        return [job_id for ids in pipe.execute() for job_id in decoded_members(ids)]


def held_total(connection: redis.Redis, queue_key: str) -> int:
    return sum(held_counts(connection, queue_key).values())


def key_states(connection: redis.Redis, now: float) -> list[KeyState]:
    """Every key with running or waiting jobs, or seen in the last hour: its limit and its numbers."""
    all_rules = rules(connection)
    connection.zremrangebyscore(KEYS_KEY, "-inf", now - 3600)
    keys = set(decoded_members(connection.zrange(KEYS_KEY, 0, -1)))
    waiting: dict[str, int] = {}
    defaults: dict[str, str] = {}
    for queue in Queue.all(connection=connection):
        for key, n in held_counts(connection, queue.key).items():
            waiting[key] = waiting.get(key, 0) + n
            keys.add(key)
    for key, raw in decoded_map(connection.hgetall(PREFIX + "defaults")).items():
        defaults[key] = raw
    states = []
    ordered = sorted(keys)
    with connection.pipeline(transaction=False) as pipe:
        for key in ordered:
            pipe.zcount(leases_key(key), now, "+inf")
            pipe.zcard(starts_key(key))
        counts = pipe.execute()
    for n, key in enumerate(ordered):
        rule = rule_for(all_rules, key)
        source = rule.pattern if rule else ""
        if rule is None:
            rule = parse_default(defaults.get(key))
            source = "default" if rule else ""
        states.append(KeyState(key, rule, source, counts[2 * n], waiting.get(key, 0), counts[2 * n + 1]))
    return states


# Paces a job's first request on the wire: a sliding window of sends per key, on Redis's clock, so
# that however long a started job takes to reach its first request, a site sees at most N of them in
# any P seconds. KEYS: the key's sends. ARGV: N, P, this send's id, a margin (seconds: the time from
# here to the request's arrival may vary by as much). Answers 0 (sent now) or the
# seconds to wait before asking again.
PACE_SCRIPT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local rate, per = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - per - tonumber(ARGV[4]))
local count = redis.call('ZCARD', KEYS[1])
if count < rate then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('EXPIRE', KEYS[1], math.ceil(per) + 1)
  return '0'
end
local oldest = redis.call('ZRANGE', KEYS[1], count - rate, count - rate, 'WITHSCORES')
return tostring(tonumber(oldest[2]) + per + tonumber(ARGV[4]) - now)
"""

#: The job each thread has paced last: a horse running several jobs at once (``--concurrency``) runs
#: each in a thread of its own, and one job's first request must not make another's look new.
_paced = threading.local()

#: The rules as the pacer last read them: (the connection pool read from, when, the rules). Replaced
#: whole (one assignment), so a horse's threads share it without a lock.
_rules_read: tuple[Any, float, list[Rule]] | None = None


def _fresh_rules(connection: redis.Redis) -> list[Rule]:
    """:func:`rules`, as read from ``connection``'s Redis at most LIMIT_RULES_FRESH seconds ago: a
    horse paces job after job, and reading every rule before each job's first request cost a
    round trip per job (a short scrape's tenth)."""
    global _rules_read
    read, now = _rules_read, time.monotonic()
    pool = connection.connection_pool
    if read is not None and read[0] is pool and 0 <= now - read[1] < LIMIT_RULES_FRESH:
        return read[2]
    found = rules(connection)
    _rules_read = (pool, now, found)
    return found


def pace_current_job(host: str) -> None:
    """On a worker, before a request to ``host``: if the running job's key is at its rate, wait
    until a send is allowed. Only the job's first request is paced (the one its start stands for);
    the claim already spaced the starts, so the wait is at most the start-up jitter. The rule is
    found among the rules as read at most LIMIT_RULES_FRESH seconds ago (``_fresh_rules``)."""
    from workqueue.async_tasks import current_job  # the horse's job; None outside a worker

    job = current_job()
    key = job_key(job) if job is not None else None
    if job is None or key is None or getattr(_paced, "job_id", None) == job.id:
        return
    _paced.job_id = job.id
    rule = rule_for(_fresh_rules(job.connection), key) or parse_default((job.meta or {}).get(DEFAULT_FIELD))
    if rule is None or not rule.rate:
        return
    script = job.connection.register_script(PACE_SCRIPT)
    deadline = time.monotonic() + rule.per + 5 * LIMIT_POLL  # never stall a job on a clock gone wrong
    while time.monotonic() < deadline:
        wait = float(script(keys=[f"{PREFIX}sends:{key}"], args=[rule.rate, rule.per, job.id, LIMIT_RATE_MARGIN]))
        if wait <= 0:
            return
        time.sleep(min(wait, rule.per) + 0.001)
