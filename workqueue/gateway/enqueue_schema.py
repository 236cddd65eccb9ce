"""What a request that enqueues may hold, as JSON Schema: one variant per catalogue task, built from
its parameters, types and bounds, and the fields every enqueue takes beside its tasks (queue, retries,
callback, unique, when, priority...). The document's ``schemas`` and the schedules' requests take
their parts from here; the patterns (job ids, callback URLs, times) are also what ``bodies`` checks,
so the app refuses what the document states. ``describe_task``: a catalogue entry as ``GET /tasks``
lists it."""

from __future__ import annotations

import re
from typing import Any

import task_def
from workqueue import limits, priorities, timing
from workqueue.calls import MAX_RESULT_TTL
from workqueue.jobs import QUEUE_NAME
from workqueue.settings import (
    CALLBACK_SECRET_MAX,
    CALLBACK_SECRET_MIN,
    CALLBACK_URL_MAX,
    DEFAULT_QUEUE,
    MAX_RETRIES,
    MAX_TASKS,
    MAX_TIMEOUT,
)
from workqueue.unique import MAX_HOLD, MAX_KEY_LENGTH

JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
#: What a callback URL must match (the app checks the same pattern the document states).
CALLBACK_URL = (
    r"^https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)(:[0-9]{1,5})?"
    r"([/?#][!-~]*)?$"
)

_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean"}


def describe_task(task: task_def.Task) -> dict[str, Any]:
    """A catalogue entry as the API lists it."""
    return {
        "name": task.name,
        "description": task.description,
        "timeout": task.timeout,
        "retries": task.retries,
        "params": [
            {
                "name": p.name,
                "type": _TYPES[p.type],
                "help": p.help,
                "required": p.default is None,
                "default": p.default,
                "minimum": p.min,
                "maximum": p.max,
                "exclusive_minimum": p.min_exclusive,
            }
            for p in task.params
        ],
    }


def _params_schema(task: task_def.Task) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    for p in task.params:
        prop: dict[str, Any] = {"type": _TYPES[p.type], "description": p.help}
        if p.type is str:
            prop["pattern"] = p.pattern
        if p.min is not None:
            prop["minimum"], prop["exclusiveMinimum"] = p.min, p.min_exclusive
        if p.max is not None:
            prop["maximum"] = p.max
        if p.default is not None:
            prop["default"] = p.default
        properties[p.name] = prop
    required = [p.name for p in task.params if p.default is None]
    return {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
        **({"required": required} if required else {}),
    }


def _common_fields() -> dict[str, Any]:
    """The fields both enqueue requests take beside their tasks (bounds: the producer's)."""
    return {
        "queue": {"type": "string", "default": DEFAULT_QUEUE, "pattern": f"^{QUEUE_NAME.pattern}$"},
        "retries": {
            "type": "integer",
            "minimum": 0,
            "maximum": MAX_RETRIES,
            "description": "Override of the task's retries.",
        },
        "timeout": {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_TIMEOUT,
            "description": "Override of the task's timeout, in seconds.",
        },
        "callback": {"$ref": "#/components/schemas/Callback"},
        "unique": _unique_field(),
        **_when_fields(),
        "priority": {
            "oneOf": [
                {"type": "string", "enum": list(priorities.LEVELS)},
                {"type": "integer", "minimum": priorities.LOWEST, "maximum": priorities.HIGHEST},
            ],
            "description": f"Priority inside the queue, higher first: {priorities.describe_levels()}, "
            "or an integer 0-9. Default normal.",
        },
        "limit_key": {
            "type": "string",
            "pattern": f"^{limits.KEY_PATTERN.pattern}$",
            "description": "Per-key limits: the jobs' limit key (default: the task's own, e.g. domain:<host>).",
        },
        "durable": {
            "type": "boolean",
            "default": False,
            "description": "Answer 201 only once a replica holds the jobs (Redis WAIT 1); 503 if none does in time.",
        },
        "result_ttl": {
            "type": "integer",
            "minimum": 0,
            "maximum": MAX_RESULT_TTL,
            "description": "Seconds each finished job and its result stay in Redis (0: none; default the task's, "
            "else a day).",
        },
    }


# -- when work runs (issue 15): a delay or a time, and the work to wait for ---------------------------

#: An RFC 3339 date-time with its offset, as ``at`` must be (a gateway cannot know its client's zone).
AT_PATTERN = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,9})?)?([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)
#: The most jobs or batches one request may wait for.
MAX_AFTER = 100


def _when_fields() -> dict[str, Any]:
    """``at``/``in`` (run later, RQ's scheduled registry) and ``after``/``after_any`` (wait for other
    work: RQ's dependencies); ``at`` and ``in`` exclude each other, as do a time and ``after``."""
    return {
        "at": {
            "type": "string",
            "pattern": AT_PATTERN,
            "description": "Run at this time (RFC 3339, with its offset: 2026-12-01T03:00:00+01:00); "
            f"refused (422, field `at`) if it is past or more than {timing.MAX_DELAY.days} days ahead.",
        },
        "in": {
            "type": "number",
            "minimum": 0,
            "exclusiveMinimum": True,
            "maximum": timing.MAX_DELAY.total_seconds(),
            "description": "Run after this many seconds.",
        },
        "after": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_AFTER,
            "items": {"type": "string", "pattern": f"^{JOB_ID.pattern}$"},
            "description": "Job or batch ids (a batch: all its jobs): the new jobs wait (deferred) until "
            "these have ended, and run if all finished; otherwise they are cancelled, with the reason "
            "(`meta.cancelled_reason`). Refused (422, field `after`) if one names nothing.",
        },
        "after_any": {
            "type": "boolean",
            "default": False,
            "description": "With `after`: run whatever the outcome of what they wait for.",
        },
    }


def _unique_field() -> dict[str, Any]:
    """Unique jobs: ``{}`` (the key is the task and its parameters) or ``{"key": K}``, either with
    ``"for"``: seconds the key stays held after the job's end."""
    return {
        "type": "object",
        "additionalProperties": False,
        "description": "Make each task a unique job: while a job with its key waits or runs (and `for` "
        "seconds after its end), no new job is made and the existing one is named in `existing_job_ids`. "
        "The key is `key`, or else the task and its parameters.",
        "properties": {
            "key": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH, "pattern": r"\S"},
            "for": {"type": "integer", "minimum": 1, "maximum": MAX_HOLD},
        },
    }


def _variant(task: task_def.Task, **extra: Any) -> dict[str, Any]:
    """One task's request shape: its name, its own parameters, and ``extra`` fields."""
    required = ["task"] + (["params"] if any(p.default is None for p in task.params) else [])
    return {
        "type": "object",
        "title": task.name,
        "required": required,
        "additionalProperties": False,
        "properties": {"task": {"type": "string", "enum": [task.name]}, "params": _params_schema(task), **extra},
    }


def _request_schemas() -> dict[str, Any]:
    """What the two enqueue routes take: one variant per catalogue task, and the callback."""
    tasks = list(task_def.CATALOGUE.values())
    count = {"type": "integer", "minimum": 1, "maximum": MAX_TASKS, "default": 1}
    return {
        "TaskEntry": {"oneOf": [_variant(t) for t in tasks]},
        "EnqueueOne": {"oneOf": [_variant(t, count=count, **_common_fields()) for t in tasks]},
        "Callback": {
            "type": "object",
            "required": ["url", "secret"],
            "additionalProperties": False,
            "description": "Each task's end, then the batch's end, is POSTed to `url`, signed: "
            "X-Workqueue-Signature is sha256=HMAC-SHA256(secret, timestamp + '.' + body) "
            "in hex, the timestamp in X-Workqueue-Timestamp.",
            "properties": {
                "url": {
                    "type": "string",
                    "pattern": CALLBACK_URL,
                    "maxLength": CALLBACK_URL_MAX,
                    "description": "Refused (422, field `callback.url`) if the gateway "
                    "cannot send to it, or if its host is or resolves to a link-local, "
                    "cloud-metadata, or (unless WORKQUEUE_ALLOW_NETWORKS allows it) "
                    "loopback, private or reserved address.",
                },
                "secret": {"type": "string", "minLength": CALLBACK_SECRET_MIN, "maxLength": CALLBACK_SECRET_MAX},
            },
        },
        "EnqueueBatch": {
            "type": "object",
            "required": ["tasks"],
            "additionalProperties": False,
            "properties": {
                "tasks": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_TASKS,
                    "items": {"$ref": "#/components/schemas/TaskEntry"},
                },
                **_common_fields(),
            },
        },
    }
