"""What the gateway's routes read from a request's JSON body, and how they refuse it: :class:`Invalid`,
a 422 (400 if the body is not even JSON) naming the field at fault. Validation is the producer's
(``TaskCall.build``), so the messages are the command line's; the patterns are the ones the OpenAPI
document states (``enqueue_schema``)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Set
from dataclasses import replace
from datetime import datetime
from typing import Any, overload

from flask import request

from workqueue import network, priorities, producer, timing
from workqueue.errors import BadInput
from workqueue.gateway import delivery, enqueue_schema
from workqueue.settings import CALLBACK_SECRET_MAX, CALLBACK_SECRET_MIN, CALLBACK_URL_MAX, MAX_DEPTH


class Invalid(Exception):
    """A request body the API refuses: 422 (400 if it is not even JSON) with the message and the
    field at fault."""

    def __init__(self, message: str, field: str | None, status: int = 422) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


def _with_priority(body: Mapping[str, Any], calls: list[producer.TaskCall]) -> list[producer.TaskCall]:
    """The calls at the body's ``priority``: a level's name or an integer 0-9 (422 otherwise)."""
    value = body.get("priority")
    if value is None:
        return calls
    if isinstance(value, bool) or not (
        isinstance(value, int) or (isinstance(value, str) and value in priorities.LEVELS)
    ):
        raise Invalid(f"priority: expected one of {', '.join(priorities.LEVELS)} or an integer 0-9", "priority")
    try:
        level = priorities.parse(value)
    except BadInput as exc:
        raise Invalid(str(exc), "priority") from None
    return [replace(call, priority=level) for call in calls]


def _unique_calls(spec: Any, calls: list[producer.TaskCall]) -> list[producer.TaskCall]:
    """The calls as unique jobs if the body asks (``"unique": {}`` or ``{"key": K, "for": SECONDS}``)."""
    if spec is None:
        return calls
    if not isinstance(spec, dict) or set(spec) - {"key", "for"}:
        raise Invalid('unique: expected {} or {"key": TEXT, "for": SECONDS}', "unique")
    hold = spec.get("for")
    if hold is not None and (isinstance(hold, bool) or not isinstance(hold, int)):
        raise Invalid(f"unique.for: expected an integer of seconds, got {hold!r}", "unique.for")
    key = spec.get("key")
    try:
        return [
            producer.TaskCall.build(
                c.task.name, c.params, retries=c.retries, timeout=c.timeout, strict=True,
                unique=key is None, unique_key=key, unique_for=hold, limit_key=c.limit_key,
            )
            for c in calls
        ]  # fmt: skip
    except BadInput as exc:
        raise Invalid(str(exc), f"unique.{'for' if exc.field == 'unique_for' else 'key'}") from None


def _when(body: Mapping[str, Any]) -> tuple[datetime | None, list[str], bool]:
    """The body's ``at``/``in`` as a time (None: now), ``after`` as ids, ``after_any`` (issue 15);
    anything the document refuses is a 422 naming its field."""
    at, delay, after, after_any = body.get("at"), body.get("in"), body.get("after"), body.get("after_any", False)
    if at is not None and (not isinstance(at, str) or not re.fullmatch(enqueue_schema.AT_PATTERN, at)):
        raise Invalid("at: expected an RFC 3339 time with its offset, e.g. 2026-12-01T03:00:00+01:00", "at")
    if delay is not None and (isinstance(delay, bool) or not isinstance(delay, int | float)):
        raise Invalid(f"in: expected a number of seconds, got {delay!r}", "in")
    if not isinstance(after_any, bool):
        raise Invalid(f"after_any: expected true or false, got {after_any!r}", "after_any")
    if after is not None and (
        not isinstance(after, list)
        or not 1 <= len(after) <= enqueue_schema.MAX_AFTER
        or not all(isinstance(i, str) and enqueue_schema.JOB_ID.fullmatch(i) for i in after)
    ):
        raise Invalid(f"after: expected a list of 1 to {enqueue_schema.MAX_AFTER} job or batch ids", "after")
    if after_any and after is None:
        raise Invalid("after_any: goes with after", "after_any")
    if after is not None and (at is not None or delay is not None):
        raise Invalid("after: a batch waits for a time or for other work, not both", "after")
    try:
        when = timing.resolve(at, delay)
    except BadInput as exc:
        raise Invalid(str(exc), exc.field) from None
    return when, list(after or []), after_any


def _body(allowed: Set[str]) -> dict[str, Any]:
    """The request's JSON object, with no field outside ``allowed`` and none null."""
    data = request.get_data(cache=False) or b"null"
    if _depth(data) > MAX_DEPTH:
        raise Invalid(f"the body nests arrays and objects deeper than {MAX_DEPTH} levels", None, 400)
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise Invalid(f"the body is not JSON ({exc})", None, 400) from None
    if not isinstance(body, dict):
        raise Invalid("expected a JSON object", None)
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise Invalid(f"{unknown[0]}: unknown field (expected some of: {', '.join(sorted(allowed))})", unknown[0])
    nulls = sorted(name for name, value in body.items() if value is None)
    if nulls:  # the document types every field; its default is had by leaving it out
        raise Invalid(f"{nulls[0]}: null is not a value (leave the field out for its default)", nulls[0])
    return body


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_NOT_BRACKETS_OR_QUOTES = bytes(b for b in range(256) if b not in b'[]{}"')
#: Arrays and objects alike: an opening bracket as ``(``, a closing one as ``)``.
_PARENS = bytes.maketrans(b"[{]}", b"(())")


def _depth(data: bytes) -> int:
    """How deep ``data``'s arrays and objects nest (read before parsing: the parser recurses),
    counted up to one past MAX_DEPTH. Each pass of ``replace`` takes off a level (every innermost
    pair), in C: a 1,000-task batch has 4,000 brackets, which a loop over each took ~0.3 ms to count."""
    brackets = _brackets(data)
    rest, depth = brackets, 0
    while rest and depth <= MAX_DEPTH:
        inner = rest.replace(b"()", b"")
        if len(inner) == len(rest):
            break
        rest, depth = inner, depth + 1
    if not rest:
        return depth
    # Unbalanced (not JSON), or deeper than MAX_DEPTH: counted as the parser would meet them.
    depth = deepest = 0
    for byte in brackets:
        depth += 1 if byte == 40 else -1  # "("
        if depth > deepest:
            deepest = depth
            if deepest > MAX_DEPTH:
                break
    return deepest


def _brackets(data: bytes) -> bytes:
    """The brackets of ``data`` outside its strings, an opening one as ``(``, a closing one as ``)``.
    Most bodies have no bracket (and no escaped quote) in a string: kept with the quotes alone, each
    string is then ``""``, and once those are taken off no quote is left (a string holding a bracket
    always leaves one). Else the strings are taken off by the regular expression, which took ~1.5 ms
    for the 4,000 strings of a 1,000-task batch."""
    if b"\\" not in data:
        kept = data.translate(_PARENS, _NOT_BRACKETS_OR_QUOTES).replace(b'""', b"")
        if b'"' not in kept:
            return kept
    return _STRING.sub(b"", data).translate(_PARENS, _NOT_BRACKETS)


def _callback(callback: Any, policy: network.NetworkPolicy) -> tuple[str, str]:
    """The callback's URL and the secret its deliveries are signed with."""
    if not isinstance(callback, dict) or set(callback) != {"url", "secret"}:
        raise Invalid('callback: expected {"url": URL, "secret": TEXT}', "callback")
    url, secret = callback["url"], callback["secret"]
    if not isinstance(url, str) or len(url) > CALLBACK_URL_MAX or not re.search(enqueue_schema.CALLBACK_URL, url):
        raise Invalid("callback.url: must be an http:// or https:// URL with a host", "callback.url")
    if not isinstance(secret, str) or not CALLBACK_SECRET_MIN <= len(secret) <= CALLBACK_SECRET_MAX:
        raise Invalid(
            f"callback.secret: expected text of {CALLBACK_SECRET_MIN} to {CALLBACK_SECRET_MAX} characters",
            "callback.secret",
        )
    try:
        return delivery.check_url(url.rstrip("\n"), policy), secret
    except BadInput as exc:
        raise Invalid(str(exc), exc.field) from None


@overload
def _integer(body: Mapping[str, Any], name: str, low: int, high: int, default: int) -> int: ...


@overload
def _integer(body: Mapping[str, Any], name: str, low: int, high: int, default: None = None) -> int | None: ...


def _integer(body: Mapping[str, Any], name: str, low: int, high: int, default: int | None = None) -> int | None:
    value = body.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise Invalid(f"{name}: expected an integer, {low} <= {name} <= {high:,}, got {value!r}", name)
    return value


def _call(entry: Mapping[str, Any], retries: Any, timeout: Any, where: str, limit_key: Any = None) -> producer.TaskCall:
    """One task and its parameters, validated by the producer's rules."""
    if not isinstance(entry.get("task"), str):
        raise Invalid(f"{where}task: expected the name of a task", f"{where}task")
    params = entry.get("params", {})
    if not isinstance(params, dict):
        raise Invalid(f"{where}params: expected an object of parameters", f"{where}params")
    for name, value in (("retries", retries), ("timeout", timeout)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise Invalid(f"{name}: expected an integer, got {value!r}", name)
    if limit_key is not None and not isinstance(limit_key, str):
        raise Invalid(f"limit_key: expected a string, got {limit_key!r}", "limit_key")
    try:
        return producer.TaskCall.build(
            entry["task"], params, retries=retries, timeout=timeout, strict=True, limit_key=limit_key
        )
    except BadInput as exc:
        field = exc.field if exc.field in ("retries", "timeout", "limit_key") else f"{where}{exc.field or 'task'}"
        raise Invalid(f"{where[:-1]}: {exc}" if where else str(exc), field) from None


#: The fields of one entry of a batch.
_ENTRY_FIELDS = frozenset({"task", "params"})


def _batch_calls(entries: list[Any], retries: Any, timeout: Any, limit_key: Any) -> list[producer.TaskCall]:
    """Each entry of a batch (``{"task": NAME, "params": {...}}``) as a call, validated as ``_call``
    does, with ``tasks[i].`` in its field. An entry equal to one before it (the same task, parameters
    of the same types and values, in the same order) is that call again, not validated twice: a batch
    of many jobs of one task and a few parameter sets is the common shape, and its validation was
    ~7 µs a task, a third of what the gateway added to a 1,000-task batch."""
    calls = []
    seen: dict[Any, producer.TaskCall] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not _ENTRY_FIELDS.issuperset(entry):
            raise Invalid(f'tasks[{i}]: expected {{"task": NAME, "params": {{...}}}}', f"tasks[{i}]")
        key = _same(entry)
        call = None if key is None else seen.get(key)
        if call is None:
            call = _call(entry, retries, timeout, f"tasks[{i}].", limit_key)
            if key is not None:
                seen[key] = call
        calls.append(call)
    return calls


def _same(entry: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """What makes two entries the same call: the task and each parameter's name, type and value (a
    float by its text: 0.0 and -0.0 are equal, 1 and 1.0 and true too, but not the same JSON);
    None for an entry that cannot be told so (a parameter that is a list or an object)."""
    task, params = entry.get("task"), entry.get("params", {})
    if not isinstance(task, str) or not isinstance(params, dict):
        return None
    key = [task]
    for name, value in params.items():
        kind = value.__class__
        if kind is float:
            value = repr(value)
        elif kind is not int and kind is not str and kind is not bool:
            return None
        key += (name, kind, value)
    return tuple(key)
