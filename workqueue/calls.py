"""What to enqueue: a catalogue task and its validated parameters (:class:`TaskCall`), with its
per-enqueue options (retries, timeout, unique key, priority, limit key, how long its result is
kept), built from flags, prompts, the API, the gateway or a file (:class:`CallFile`, read a
chunk at a time). ``workqueue.producer`` enqueues them."""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import json
import math
import random
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

from rq import Retry

import task_def
from workqueue import limits, priorities, unique
from workqueue.errors import BadInput
from workqueue.settings import (
    MAX_PARAMS_BYTES,
    MAX_RETRIES,
    MAX_TIMEOUT,
    RESULT_TTL,
)


@dataclass(frozen=True)
class TaskCall:
    """A task and its validated parameters, ready to enqueue."""

    task: task_def.Task
    params: dict[str, Any]
    #: Per-enqueue overrides of the task's retries and timeout (seconds).
    retries: int | None = None
    timeout: int | None = None
    #: Unique jobs (``unique``): the key this call's job holds while it waits or runs (None: not
    #: unique), and seconds it stays held after the job's end (None: freed at the end).
    unique_key: str | None = None
    unique_for: int | None = None
    #: More of the job's meta (e.g. a crawl's depth), beside what enqueueing puts there.
    meta: Mapping[str, Any] | None = field(default=None, compare=False)
    #: Priority level inside the queue, 0-9, higher first (``priorities``; default normal, 5).
    priority: int = priorities.NORMAL
    #: Per-key limits (``workqueue.limits``): the job's limit key, given at enqueue; None: the
    #: task's own (``Task.limit_key``, e.g. ``domain:<host>`` for scrape), if any.
    limit_key: str | None = None
    #: Seconds the finished job and its result are kept (None: the task's ``result_ttl``, else a day).
    result_ttl: int | None = None

    @classmethod
    def build(
        cls,
        task_name: str,
        params: Mapping[str, Any] | None = None,
        *,
        retries: int | None = None,
        timeout: int | None = None,
        strict: bool = False,
        unique: bool = False,
        unique_key: str | None = None,
        unique_for: int | str | None = None,
        priority: int | str | None = None,
        limit_key: str | None = None,
        result_ttl: int | str | None = None,
    ) -> TaskCall:
        """Validate ``task_name`` and ``params`` against the catalogue; raises BadInput. ``strict``:
        numbers must be JSON numbers, not text (for the HTTP API, whose schema says so). ``unique``
        (the key is the task and its parameters) or ``unique_key``, optionally ``unique_for`` (seconds
        or ``10m``): see :mod:`workqueue.unique`. ``priority``: a level's name or number (``priorities.parse``).
        ``result_ttl``: how long the finished job is kept (seconds or ``10m``; :func:`parse_result_ttl`)."""
        level = priorities.NORMAL if priority is None else priorities.parse(priority)
        if retries is not None and not 0 <= retries <= MAX_RETRIES:
            raise BadInput(f"retries: {retries} is out of bounds, expected 0 <= retries <= {MAX_RETRIES}", "retries")
        if timeout is not None and not 1 <= timeout <= MAX_TIMEOUT:
            raise BadInput(
                f"timeout: {timeout} is out of bounds, expected 1 <= timeout <= {MAX_TIMEOUT:,} seconds", "timeout"
            )
        try:
            task = task_def.get_task(task_name)
            values = task.validate(params or {}, strict)
        except task_def.TaskDefError as exc:
            raise BadInput(str(exc), f"params.{exc.field}" if exc.field else "task") from None
        size = _json_bound(task, values)
        if size > MAX_PARAMS_BYTES and (size := len(json.dumps(values))) > MAX_PARAMS_BYTES:
            raise BadInput(
                f"{task.name}: parameters are {size:,} bytes of JSON, over the {MAX_PARAMS_BYTES:,} limit", "params"
            )
        key, hold = _unique_options(task.name, values, unique, unique_key, unique_for)
        if limit_key is not None:
            limits.check_key(limit_key)
        kept = None if result_ttl is None else parse_result_ttl(result_ttl)
        return cls(task, values, retries, timeout, key, hold, priority=level, limit_key=limit_key, result_ttl=kept)

    def effective_limit_key(self) -> str | None:
        """The limit key the job carries: the one given, else the task's (None: none)."""
        if self.limit_key is not None:
            return self.limit_key
        return self.task.limit_key(self.params) if self.task.limit_key else None

    def kept_for(self) -> int:
        """Seconds the finished job and its result stay in Redis: the enqueue's, else the task's, else a day."""
        if self.result_ttl is not None:
            return self.result_ttl
        return RESULT_TTL if self.task.result_ttl is None else self.task.result_ttl

    def job_timeout(self) -> int:
        return self.timeout or self.task.job_timeout(self.params)

    def retry(self) -> Retry | None:
        """RQ's Retry for this call: exponential backoff from the task's first wait, with jitter."""
        count = self.task.retries if self.retries is None else self.retries
        if count <= 0:
            return None
        waits = [max(1, round(self.task.backoff * 2**i * random.uniform(0.5, 1.5))) for i in range(count)]
        return Retry(max=count, interval=waits)

    def describe(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{self.task.name}({args})"


def _json_bound(task: task_def.Task, values: dict[str, Any]) -> int:
    """At least the bytes of ``json.dumps(values)`` (the task's validated parameters), without writing
    them: its numbers and names are bounded once per task, each text at most 12 bytes a character
    (``\\ud83d\\ude00``) and its quotes. Writing the JSON was a third of validating a call."""
    fixed, texts = _json_plan(task)
    return fixed + sum(12 * len(values[name]) for name in texts)


@functools.cache
def _json_plan(task: task_def.Task) -> tuple[int, tuple[str, ...]]:
    """The most bytes ``json.dumps`` writes for a task's parameters besides their texts' characters,
    and the names of its text parameters; an unbounded integer counts as a whole limit (written, then)."""
    fixed, texts = 1, []  # "{" and, for each parameter, its name, ": ", its value and ", " or "}"
    for p in task.params:
        fixed += len(json.dumps(p.name)) + 4
        if p.type is str:
            texts.append(p.name)
            fixed += 2
        elif p.type is bool:
            fixed += len("false")
        elif p.type is float:
            fixed += len(repr(-sys.float_info.min))  # the longest finite float: "-2.2250738585072014e-308"
        elif p.min is not None and p.max is not None:
            fixed += max(len(str(math.floor(p.min))), len(str(math.ceil(p.max))))
        else:
            fixed += MAX_PARAMS_BYTES + 1
    return fixed, tuple(texts)


def _unique_options(
    task: str, params: dict[str, Any], flag: bool, key: str | None, hold: int | str | None
) -> tuple[str | None, int | None]:
    """The unique key (None: not unique) and hold time a call asked for; raises BadInput."""
    if flag and key is not None:
        raise BadInput("unique: give --unique (the task and its parameters) or --unique-key K, not both", "unique_key")
    try:
        key = None if key is None else unique.check_key(key)
    except unique.UniqueError as exc:
        raise BadInput(str(exc), "unique_key") from None
    try:
        seconds = None if hold is None else unique.parse_hold(hold)
    except unique.UniqueError as exc:
        raise BadInput(str(exc), "unique_for") from None
    if seconds is not None and not (flag or key):
        raise BadInput("unique for: goes with --unique or --unique-key K", "unique_for")
    if flag:
        key = unique.task_key(task, params)
    return key, seconds


# -- memory per job (issue 18): how long finished jobs are kept ------------------------------------

#: The longest a finished job may be kept: every key workqueue writes expires.
MAX_RESULT_TTL = 30 * 24 * 3600
_DURATION = re.compile(r"\s*(\d+)\s*([smhd]?)\s*")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_result_ttl(value: int | str) -> int:
    """Seconds from ``90``, ``90s``, ``10m``, ``2h`` or ``1d``, 0 (keep nothing once it ends) to 30
    days; raises BadInput. A finished job is two thirds of Redis's memory per job: a shorter TTL
    bounds it (a day at 1,500 jobs/s is 130 million jobs)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise BadInput(f"result TTL: expected seconds or a duration such as 90s, 10m, 2h or 1d, got {value!r}",
                       "result_ttl")  # fmt: skip
    match = None if isinstance(value, int) else _DURATION.fullmatch(value)
    if isinstance(value, str) and not match:
        raise BadInput(f"result TTL: expected a duration such as 90s, 10m, 2h or 1d, got {value!r}", "result_ttl")
    seconds = value if isinstance(value, int) else int(match[1]) * _UNITS[match[2]]  # type: ignore[index]
    if not 0 <= seconds <= MAX_RESULT_TTL:
        raise BadInput(f"result TTL: {value!r} is out of bounds, expected 0 seconds to 30 days", "result_ttl")
    return seconds


def keeping_results(calls: Sequence[TaskCall], result_ttl: int | str | None) -> Sequence[TaskCall]:
    """The calls, each kept ``result_ttl`` (seconds or ``10m``) once it ends; None: as they are."""
    if result_ttl is None:
        return calls
    seconds = parse_result_ttl(result_ttl)
    return map_calls(calls, lambda call: dataclasses.replace(call, result_ttl=seconds))


def parse_param_pairs(pairs: Iterable[str]) -> dict[str, str]:
    """``["seconds=2", ...]`` as a dict; raises BadInput on a pair without '='."""
    params: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise BadInput(f"--param {pair!r}: expected KEY=VALUE, e.g. --param seconds=2")
        params[key.strip()] = value
    return params


def load_calls(
    path: Path, *, retries: int | None = None, timeout: int | None = None, limit_key: str | None = None
) -> list[TaskCall]:
    """Every line of a JSON-lines file (``{"task": ..., "params": {...}}``), validated whole."""
    return list(CallFile(path, retries=retries, timeout=timeout, limit_key=limit_key))


class CallFile(Sequence[TaskCall]):
    """The calls of a JSON-lines file (``{"task": ..., "params": {...}}`` a line), validated whole when
    made (one pass that keeps nothing but the count; BadInput names the first bad line) and read again,
    a line at a time, each time it is iterated: ``enqueue`` takes a chunk at a time, so a file of
    100,000 tasks is never held in memory. A file changed between the passes fails there (BadInput)."""

    def __init__(
        self, path: Path, *, retries: int | None = None, timeout: int | None = None, limit_key: str | None = None
    ) -> None:
        self.path = path
        self._options: dict[str, Any] = {"retries": retries, "timeout": timeout, "limit_key": limit_key}
        self._maps: tuple[Callable[[TaskCall], TaskCall], ...] = ()
        self._count = sum(1 for _ in self._read())
        if not self._count:
            raise BadInput(f"{path}: no tasks in the file")

    def _read(self) -> Iterator[TaskCall]:
        try:
            with self.path.open(encoding="utf-8") as lines:
                for number, line in enumerate(lines, 1):
                    if line.strip():
                        yield _parse_line(self.path, number, line, self._options)
        except OSError as exc:
            raise BadInput(f"cannot read {self.path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise BadInput(f"{self.path}: not UTF-8 text") from None

    def __iter__(self) -> Iterator[TaskCall]:
        for call in self._read():
            for change in self._maps:
                call = change(call)
            yield call

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> TaskCall: ...
    @overload
    def __getitem__(self, index: slice) -> list[TaskCall]: ...
    def __getitem__(self, index: int | slice) -> TaskCall | list[TaskCall]:
        if isinstance(index, slice):
            return list(itertools.islice(iter(self), *index.indices(self._count)))
        if not -self._count <= index < self._count:
            raise IndexError(index)
        return next(itertools.islice(iter(self), index % self._count, None))

    def map(self, change: Callable[[TaskCall], TaskCall]) -> CallFile:
        """The same file, each call read through ``change`` (e.g. a priority given on the command line)."""
        mapped = copy.copy(self)
        mapped._maps = (*self._maps, change)
        return mapped


def map_calls(calls: Sequence[TaskCall], change: Callable[[TaskCall], TaskCall]) -> Sequence[TaskCall]:
    """Each call through ``change``: lazily for a :class:`CallFile`, else as a list."""
    return calls.map(change) if isinstance(calls, CallFile) else [change(call) for call in calls]


def _parse_line(path: Path, number: int, line: str, options: dict[str, Any]) -> TaskCall:
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as exc:
        raise BadInput(f"{path}:{number}: not JSON ({exc.msg})") from None
    if not isinstance(entry, dict) or not isinstance(entry.get("task"), str):
        raise BadInput(f'{path}:{number}: expected {{"task": NAME, "params": {{...}}}}')
    if not isinstance(entry.get("params", {}), dict) or set(entry) - {"task", "params"}:
        raise BadInput(f'{path}:{number}: expected {{"task": NAME, "params": {{...}}}} and nothing else')
    try:
        return TaskCall.build(entry["task"], entry.get("params"), **options)
    except BadInput as exc:
        raise BadInput(f"{path}:{number}: {exc}") from None
