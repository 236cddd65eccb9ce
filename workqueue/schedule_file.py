"""A schedule file (``schedules.toml``, for people who keep configuration in git): read whole and
validated before anything is written, then applied in one transaction, idempotently."""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from workqueue.errors import BadInput
from workqueue.schedules import (
    INDEX,
    Schedule,
    Stored,
    history_key,
    key,
    load_all,
    names,
    redis_now,
    transaction,
    write,
)

_FILE_KEYS = {"cron", "every", "tz", "task", "params", "queue", "retries", "timeout"}


# -- schedules.toml ----------------------------------------------------------------------------


def load_file(path: Path) -> list[Schedule]:
    """Every schedule in a TOML file (``[schedules.NAME]`` tables), all validated: raises BadInput
    (``FILE: schedules.NAME: what``) at the first thing wrong."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path}: not TOML ({exc})") from None
    tables = data.get("schedules")
    if set(data) - {"schedules"} or not isinstance(tables, dict):
        raise BadInput(f"{path}: expected [schedules.NAME] tables and nothing else")
    result = []
    for name, entry in tables.items():
        where = f"{path}: schedules.{name}"
        if not isinstance(entry, dict):
            raise BadInput(f"{where}: expected a table")
        unknown = set(entry) - _FILE_KEYS
        if unknown:
            raise BadInput(
                f"{where}: unknown key(s) {', '.join(sorted(unknown))} (allowed: {', '.join(sorted(_FILE_KEYS))})"
            )
        if not isinstance(entry.get("params", {}), dict) or "task" not in entry or "queue" not in entry:
            raise BadInput(f"{where}: needs task, queue, cron or every, and params as a table")
        try:
            result.append(Schedule.build(name, **entry))
        except (BadInput, TypeError) as exc:
            raise BadInput(f"{where}: {exc}") from None
    return result


@dataclass
class Applied:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def apply(conn: redis.Redis, wanted: Iterable[Schedule], *, prune: bool = False) -> Applied:
    """Make Redis hold ``wanted`` (already validated), in one transaction: create the missing,
    redefine the changed, leave the same ones untouched (their state too) and, with ``prune``,
    remove the others. Applying the same schedules twice changes nothing."""
    wanted = list(wanted)

    def change(pipe: redis.client.Pipeline) -> Applied:
        current = {s.name: s for s in load_all(pipe)}
        result = Applied()
        now = redis_now(pipe)
        writes: list[tuple[Schedule, Stored | None]] = []
        for schedule in wanted:
            old = current.get(schedule.name)
            if old is not None and old.schedule == schedule:
                result.unchanged.append(schedule.name)
                continue
            (result.created if old is None else result.updated).append(schedule.name)
            writes.append((schedule, old))
        if prune:
            result.removed = sorted(set(current) - {s.name for s in wanted})
        pipe.multi()
        for schedule, old in writes:
            write(pipe, schedule, old, now)
        for name in result.removed:
            pipe.delete(key(name), history_key(name))
            pipe.srem(INDEX, name)
        return result

    watched = [INDEX, *(key(n) for n in names(conn)), *(key(s.name) for s in wanted)]
    return transaction(conn, change, *watched)
