"""The task catalogue: every task a worker may run, with its typed, bounded, defaulted parameters.

A worker resolves a job's function through :func:`by_path` and nothing else, so this module is the
allow-list. Validation lives on :class:`Param`, so the producer's flags and prompts, the Python API
and the worker all apply the same rules and print the same messages.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn
from urllib.parse import urlsplit

from task_def import crawl, maths, scrape, sleep
from workqueue.settings import EXTRA_TASKS_ENV


class TaskDefError(ValueError):
    """A task name or parameters that the catalogue refuses; the message says what to change, and
    ``field`` names the parameter at fault (None for the task name)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class UnknownTask(TaskDefError):
    """Raised for a task name (or a function path) that is not in the catalogue."""


class InvalidParams(TaskDefError):
    """Raised for a parameter that is unknown, of the wrong type, or out of bounds."""


#: What :func:`_http_url` accepts, as a regular expression (for API documents).
HTTP_URL_PATTERN = r"^\s*https?://[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?([/?#]\S*)?\s*$"


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    return value


_BOOLEANS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def domain_limit_key(params: Mapping[str, Any]) -> str | None:
    """``domain:<host>`` for a task whose ``url`` parameter names the host it will load (lower
    case, without port): the key per-domain limits (``limit set 'domain:*' ...``) match."""
    url = params.get("url")
    host = urlsplit(url).hostname if isinstance(url, str) else None
    return f"domain:{host.lower()}" if host else None


def _number(x: float) -> str:
    return f"{int(x):,}" if float(x).is_integer() else f"{x:g}"


@dataclass(frozen=True)
class Param:
    """One parameter: its type, bounds and default, and how to read it from text or JSON."""

    name: str
    type: type
    default: Any
    help: str
    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False
    check: Callable[[Any], Any] | None = None
    #: A regular expression every valid text value matches, for API documents (``check`` decides).
    pattern: str = r"\S"

    def describe_bounds(self) -> str:
        """The bounds as a reader would say them, e.g. '0 < seconds <= 3600'."""
        if self.min is None and self.max is None:
            return ""
        low = "" if self.min is None else f"{_number(self.min)} {'<' if self.min_exclusive else '<='} "
        high = "" if self.max is None else f" <= {_number(self.max)}"
        return f"{low}{self.name}{high}"

    def parse(self, raw: Any, strict: bool = False) -> Any:
        """The value ``raw`` stands for (text from a flag or prompt, or a JSON value; ``strict``:
        a JSON value of the parameter's own type only, as an API's schema promises)."""
        value = self._coerce(raw, strict)
        too_low = self.min is not None and (value <= self.min if self.min_exclusive else value < self.min)
        too_high = self.max is not None and value > self.max
        if too_low or too_high:
            raise InvalidParams(f"{self.name}: {raw!r} is out of bounds, expected {self.describe_bounds()}", self.name)
        if self.check is not None:
            try:
                value = self.check(value)
            except ValueError as exc:
                raise InvalidParams(f"{self.name}: {raw!r} {exc}", self.name) from None
        return value

    def _coerce(self, raw: Any, strict: bool = False) -> Any:
        kind = type(raw)
        if kind is self.type and kind is not str and (kind is not float or math.isfinite(raw)):
            return raw  # a JSON value of the parameter's own type, as the checks below would return it
        given = raw
        if self.type is bool:
            text = raw.strip().lower() if isinstance(raw, str) and not strict else None
            if isinstance(raw, bool) or text in _BOOLEANS:
                return raw if isinstance(raw, bool) else _BOOLEANS[text or ""]
            self._wrong(given)
        if isinstance(raw, bool) or raw is None:
            self._wrong(given)
        if self.type is str:
            if not isinstance(raw, str) or not raw.strip():
                self._wrong(given)
            return raw.strip()
        if isinstance(raw, str):
            if strict:
                self._wrong(given)
            text = raw.strip().replace("_", "")
            try:
                raw = int(text)
            except ValueError:
                try:
                    raw = float(text)
                except ValueError:
                    self._wrong(given)
        if not isinstance(raw, (int, float)) or not math.isfinite(raw):
            self._wrong(given)
        if self.type is int:
            if isinstance(raw, float) and not raw.is_integer():
                self._wrong(given)
            return int(raw)
        return float(raw)

    def _wrong(self, raw: Any) -> NoReturn:
        """Refuse ``raw``, a value not of this parameter's type (made only when refusing: the message
        holds the value's repr, which was most of validating a valid one)."""
        kind = {int: "an integer", float: "a number", str: "text", bool: "true or false"}[self.type]
        raise InvalidParams(f"{self.name}: expected {kind}, got {raw!r}", self.name) from None


@dataclass(frozen=True)
class Task:
    """A catalogue entry: the function, its parameters and how a worker should treat it."""

    name: str
    func: Callable[..., Any]
    description: str
    params: tuple[Param, ...]
    timeout: int
    #: Whether running the task twice is harmless, so a job lost with its worker may be re-run.
    rerun_safe: bool = True
    #: How many times a failed job is tried again (a raise, a timeout, its worker dying), and the
    #: first wait in seconds: the waits double each time, with jitter.
    retries: int = 3
    backoff: float = 2.0
    timeout_for: Callable[[dict], int] | None = field(default=None, compare=False)
    #: Per-key limits (``workqueue.limits``): the limit key a job of this task carries, derived from
    #: its validated parameters (None: no key), unless its enqueue gives ``--limit-key``.
    limit_key: Callable[[Mapping[str, Any]], str | None] | None = field(default=None, compare=False)
    #: The limit a job of this task keeps to when no configured rule (``limit set``) matches its key:
    #: (requests, per_seconds, concurrency), e.g. (1, 1.0, 2) for 1 request a second and 2 at a time;
    #: 0 requests or 0 concurrency for no bound of that kind. None: unlimited unless a rule says so.
    default_limit: tuple[float, float, int] | None = None
    #: Seconds a finished job of this task (its hash and result) stays in Redis, unless its enqueue
    #: says otherwise (``--keep-results``, ``result_ttl=``); None: the default, a day (RESULT_TTL).
    result_ttl: int | None = None

    @property
    def path(self) -> str:
        """The dotted path RQ stores in the job, and the key the worker looks up."""
        return f"{self.func.__module__}.{self.func.__qualname__}"

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.params)
        raise InvalidParams(f"{self.name}: unknown parameter {name!r} (it takes: {known})", name)

    def validate(self, given: Mapping[str, Any], strict: bool = False) -> dict[str, Any]:
        """All parameters, checked, with defaults filled in; raises InvalidParams."""
        for name in given:
            self.param(name)
        values = {}
        for p in self.params:
            if p.name in given:
                values[p.name] = p.parse(given[p.name], strict)
            elif p.default is None:
                raise InvalidParams(f"{self.name}: missing required parameter {p.name!r} ({p.help})", p.name)
            else:
                values[p.name] = p.default
        return values

    def job_timeout(self, params: dict) -> int:
        """Seconds a job of this task may run, given its validated parameters."""
        return self.timeout_for(params) if self.timeout_for else self.timeout

    def signature(self) -> str:
        return " ".join(f"{p.name}={p.default if p.default is not None else '…'}" for p in self.params)


_TASKS = (
    Task(
        "sleep",
        sleep.sleep,
        "Sleep for a number of seconds, reporting progress each second.",
        (Param("seconds", float, 5.0, "how long to sleep", min=0, max=3600, min_exclusive=True),),
        timeout=3660,
        timeout_for=lambda p: int(p["seconds"]) + 60,
    ),
    Task(
        "scrape",
        scrape.scrape,
        "Fetch a web page; report its status, title, links, words and size.",
        (
            Param("url", str, None, "the http(s) URL to fetch", check=_http_url, pattern=HTTP_URL_PATTERN),
            Param("timeout", float, 20.0, "seconds allowed for the whole fetch", min=0, max=120, min_exclusive=True),
            Param("max_bytes", int, 5_000_000, "largest body read, in bytes", min=1, max=50_000_000),
        ),
        timeout=180,
        retries=2,
        backoff=5.0,
        limit_key=domain_limit_key,
    ),
    Task(
        "crawl",
        crawl.crawl,
        "Crawl a site politely from a URL: each page a job, its links new jobs of the same batch.",
        (
            Param("url", str, None, "the http(s) URL to start from", check=_http_url, pattern=HTTP_URL_PATTERN),
            Param("max_pages", int, 100, "most pages fetched over the whole crawl", min=1, max=crawl.MAX_PAGES),
            Param("max_depth", int, 3, "most links followed from the start page", min=0, max=crawl.MAX_DEPTH),
            Param("same_site", bool, True, "follow links to the start page's host only"),
            Param("timeout", float, 20.0, "seconds allowed for each page", min=0, max=120, min_exclusive=True),
        ),
        timeout=180,
        retries=0,
        limit_key=domain_limit_key,
        default_limit=(1, 1.0, 2),  # 1 request a second and 2 at a time per site
    ),
    Task(
        "primes",
        maths.count_primes,
        "Count the primes below n with a segmented sieve.",
        (Param("n", int, 10_000_000, "the upper bound (exclusive)", min=0, max=10**10),),
        timeout=600,
    ),
    Task(
        "pi",
        maths.monte_carlo_pi,
        "Estimate pi by Monte Carlo sampling of the unit square.",
        (
            Param("samples", int, 1_000_000, "random points to draw", min=1, max=10**9),
            Param("seed", int, 0, "random seed, for a reproducible estimate", min=0, max=2**32),
        ),
        timeout=900,
    ),
    Task(
        "fibonacci",
        maths.fibonacci,
        "Compute the n-th Fibonacci number; report its digit count and leading digits.",
        (
            Param("n", int, 100_000, "which Fibonacci number", min=0, max=10_000_000),
            Param("prefix_digits", int, 20, "how many leading digits to return", min=1, max=1000),
        ),
        timeout=600,
    ),
    Task(
        "factorise",
        maths.factorise,
        "Factorise an integer into primes (Pollard-Brent).",
        (Param("n", int, 600851475143, "the integer to factorise", min=1, max=10**24),),
        timeout=600,
    ),
)


def _extra_tasks() -> tuple[Task, ...]:
    """Tasks from the modules named in ``WORKQUEUE_EXTRA_TASKS`` (comma-separated), each a ``TASKS`` tuple.

    How an operator adds tasks of their own: the variable is read from the environment of the
    process (the worker's, the producer's), never from Redis.
    """
    extra: list[Task] = []
    for name in filter(None, (n.strip() for n in os.environ.get(EXTRA_TASKS_ENV, "").split(","))):
        module = importlib.import_module(name)
        extra += [task for task in module.TASKS if isinstance(task, Task)]
    return tuple(extra)


_ALL = _TASKS + _extra_tasks()
CATALOGUE: dict[str, Task] = {task.name: task for task in _ALL}
_BY_PATH: dict[str, Task] = {task.path: task for task in _ALL}
if len(CATALOGUE) != len(_ALL) or len(_BY_PATH) != len(_ALL):
    raise ImportError("task_def: two tasks share a name or a function; each needs its own")


def get_task(name: str) -> Task:
    """The task called ``name``; raises UnknownTask naming the ones that exist."""
    try:
        return CATALOGUE[name]
    except KeyError:
        raise UnknownTask(f"unknown task {name!r}; the catalogue has: {', '.join(CATALOGUE)}") from None


def by_path(path: str | None) -> Task | None:
    """The task whose function lives at ``path``, or None: the worker's allow-list check."""
    return _BY_PATH.get(path or "")
