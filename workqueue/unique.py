"""Unique jobs: while a job holding a unique key is waiting, scheduled, deferred or running (and,
if asked, for a while after it ended), enqueueing another call with that key returns the existing
job instead of a new one.

RQ 3.0's own ``unique=True`` is not used: it takes the job id as the key and asks only whether the
job's hash exists, which outlives the job's end by its result TTL (the key would never free at the
end); it ignores the pipeline it is given (a batch would no longer be all or none) and refuses jobs
with dependencies. Here a key is a Redis string naming the job that holds it: the producer WATCHes
the keys, reads who holds them (``unique_probe.lua``) and claims the free ones in the very
transaction that enqueues the jobs, so two producers racing create one job. The job's end frees
its key (``release``, in the transaction that records the end), or gives it the TTL asked for.

Redis keys: ``workqueue:unique:<sha256 of the key>`` = the holder's job id.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import redis
from rq.job import Job

from workqueue import lua

PREFIX = "workqueue:unique:"
#: The longest ``--unique-key`` (characters) and ``--unique-for`` (seconds: 30 days).
MAX_KEY_LENGTH = 512
MAX_HOLD = 30 * 24 * 3600
#: The job statuses that end a job: its key is free after them (once its TTL, if any, ran out).
ENDED = ("finished", "failed", "stopped", "canceled")
#: Where the job's meta keeps its key (the Redis key) and how long it stays held after the end.
META = "unique"

_PROBE = lua.script("unique_probe")
_RELEASE = lua.script("unique_release")
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class UniqueError(ValueError):
    """A unique key or hold time the queue refuses; the message says what to change."""


def task_key(task: str, params: Mapping[str, Any]) -> str:
    """``--unique``'s key: the task and its validated parameters as canonical JSON."""
    return f"{task}:{json.dumps(params, sort_keys=True, separators=(',', ':'), ensure_ascii=False)}"


def check_key(key: str) -> str:
    """``key`` if it is a usable ``--unique-key`` (non-blank, at most MAX_KEY_LENGTH characters)."""
    if not isinstance(key, str) or not key.strip() or len(key) > MAX_KEY_LENGTH:
        raise UniqueError(f"unique key: expected 1 to {MAX_KEY_LENGTH} characters of text, got {key!r}")
    return key


def parse_hold(text: str | int) -> int:
    """Seconds from ``10m``, ``2h``, ``1d``, ``90`` (seconds), 1 second to 30 days."""
    if isinstance(text, bool):
        raise UniqueError(f"unique for: expected a duration such as 90s, 10m, 2h or 1d, got {text!r}")
    if isinstance(text, int):
        seconds = text
    else:
        match = _DURATION.match(str(text))
        if not match:
            raise UniqueError(f"unique for: expected a duration such as 90s, 10m, 2h or 1d, got {text!r}")
        seconds = int(match[1]) * _UNITS[match[2]]
    if not 1 <= seconds <= MAX_HOLD:
        raise UniqueError(f"unique for: {text!r} is out of bounds, expected 1 second to 30 days")
    return seconds


def redis_key(key: str) -> str:
    """The Redis key for a unique key of any length or content."""
    return PREFIX + hashlib.sha256(key.encode()).hexdigest()[:40]


def holders(pipe: redis.client.Pipeline, keys: Sequence[str]) -> dict[str, str]:
    """Which of ``keys`` (Redis keys) a live job holds, and its id; read in one round trip on a
    pipeline in immediate mode (after WATCH), so the transaction that follows sees the same."""
    if not keys:
        return {}
    replies = pipe.eval(_PROBE, len(keys), *keys, Job.redis_job_namespace_prefix, *ENDED)
    return {k: r.decode() if isinstance(r, bytes) else r for k, r in zip(keys, replies, strict=True) if r}


def claim(pipe: redis.client.Pipeline, key: str, job_id: str) -> None:
    """Inside the enqueueing transaction: ``job_id`` holds ``key`` until its end."""
    pipe.set(key, job_id)


def meta(key: str, hold: int | None) -> dict[str, Any]:
    return {META: {"key": key, "for": hold or 0}}


def release(pipe: redis.client.Pipeline, job: Job) -> None:
    """Queue on ``pipe`` the freeing of ``job``'s unique key, if it has one and still holds it."""
    info = (job.meta or {}).get(META)
    if isinstance(info, dict) and isinstance(info.get("key"), str):
        pipe.eval(_RELEASE, 1, info["key"], job.id, int(info.get("for") or 0))
