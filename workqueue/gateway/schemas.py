"""The named schemas of the gateway's OpenAPI document (its ``components``): the shape of every
answer, the bodies of the schedule and limit routes, and the enqueue requests' (``enqueue_schema``).
The paths that name them are ``openapi``'s."""

from __future__ import annotations

from typing import Any

import task_def
from workqueue import limits
from workqueue.gateway.enqueue_schema import _common_fields, _request_schemas, _variant

#: A job's statuses as the document lists them.
_JOB_STATUSES = ("queued", "finished", "failed", "started", "deferred", "scheduled", "stopped", "canceled", "created")


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


def _fields(schema: dict[str, Any], *names: str) -> dict[str, Any]:
    """Properties ``names``, each typed by (a copy of) ``schema``."""
    return {name: dict(schema) for name in names}


def _list_of(name: str, item: dict[str, Any]) -> dict[str, Any]:
    """An answer holding one list, ``name``, of ``item``."""
    return {"type": "object", "required": [name], "properties": {name: {"type": "array", "items": item}}}


def _schemas() -> dict[str, Any]:
    """Every named schema, requests' then responses'."""
    return {
        "Error": {
            "type": "object",
            "required": ["error", "field"],
            "properties": {"error": {"type": "string"}, "field": _nullable({"type": "string"})},
        },
        **_request_schemas(),
        "Enqueued": {
            "type": "object",
            "required": ["batch_id", "queue", "job_ids"],
            "properties": {
                "batch_id": {"type": "string"},
                "queue": {"type": "string"},
                "job_ids": {"type": "array", "items": {"type": "string"}},
                "existing_job_ids": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "Unique jobs: the jobs already queued or running that tasks found holding "
                    "their key (no new job was made for those tasks); `job_ids` lists the new ones only.",
                },
            },
        },
        "Job": _job_schema(),
        **_batch_and_health_schemas(),
        "Message": {"type": "object", "required": ["message"], "properties": {"message": {"type": "string"}}},
        "Messages": _list_of("messages", {"type": "string"}),
        "Queues": _queues_schema(),
        "NoFields": {"type": "object", "additionalProperties": False, "description": "An empty object, {}."},
        "Tasks": _tasks_schema(),
        **schedule_schemas(),
        **_limit_schemas(),
    }


def _job_schema() -> dict[str, Any]:
    """``GET /jobs/{job_id}``'s answer (``job_json.job_detail``)."""
    nullable_string = _nullable({"type": "string"})
    return {
        "type": "object",
        "required": ["id", "task", "queue", "status"],
        "properties": {
            **_fields({"type": "string"}, "id", "task", "queue"),
            "status": {"type": "string", "enum": list(_JOB_STATUSES)},
            **_fields(nullable_string, "worker", "batch", "description"),
            **_fields(nullable_string, "created_at", "enqueued_at", "started_at", "ended_at"),
            "elapsed": _nullable({"type": "number"}),
            "progress": _nullable(
                {
                    "type": "object",
                    "properties": {
                        **_fields({"type": "number"}, "done", "total", "percent"),
                        "message": {"type": "string"},
                    },
                }
            ),
            "result": {
                "description": "The task's return value, once finished (any JSON); null if it cannot be "
                "read as JSON (see `unreadable`)."
            },
            "unreadable": _nullable(
                {
                    "type": "string",
                    "description": "Why the result is null though the job "
                    "finished: it is not JSON (written by a foreign client), and is left alone.",
                }
            ),
            "error": nullable_string,
            "attempts": {"type": "array", "items": {"type": "object"}},
            "meta": {"type": "object"},
            "can_stop": {"type": "boolean"},
            "can_requeue": {"type": "boolean"},
            "scheduled_for": _nullable(
                {"type": "string", "description": "When a scheduled job is due (RFC 3339, UTC)."}
            ),
            "waiting_for": _nullable(
                {
                    "type": "object",
                    "description": "What a job enqueued with `after` waits for: each job and its status.",
                    "properties": {
                        "jobs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": _fields({"type": "string"}, "id", "status"),
                            },
                        },
                        "batches": {"type": "array", "items": {"type": "string"}},
                        "after_any": {"type": "boolean"},
                    },
                }
            ),
        },
    }


def _batch_and_health_schemas() -> dict[str, Any]:
    """``GET /batches/{batch_id}``'s and ``GET /health``'s answers."""
    return {
        "Batch": {
            "type": "object",
            "required": ["batch_id", "total", "finished", "failed", "done", "jobs"],
            "properties": {
                **_fields({"type": "string"}, "batch_id", "queue"),
                **_fields({"type": "integer"}, "total", "finished", "failed"),
                "done": {"type": "boolean"},
                "elapsed": _nullable({"type": "number"}),
                "jobs": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["id", "status"],
                        "properties": {"id": {"type": "string"}, "status": {"type": "string"}},
                    },
                },
            },
        },
        "Health": {
            "type": "object",
            "required": ["ok", "redis", "helpers"],
            "properties": {
                "ok": {"type": "boolean", "description": "Redis answers and every helper thread runs."},
                "redis": {"type": "boolean"},
                "helpers": {
                    "type": "array",
                    "description": "The gateway's helper threads (`callbacks`: the delivery "
                    "of results); one that dies is logged and restarted, `restarts` counts it.",
                    "items": {
                        "type": "object",
                        "required": ["name", "up", "restarts", "last_error"],
                        "properties": {
                            "name": {"type": "string"},
                            "up": {"type": "boolean"},
                            "restarts": {"type": "integer"},
                            "last_error": _nullable({"type": "string"}),
                        },
                    },
                },
            },
        },
    }


def _queues_schema() -> dict[str, Any]:
    """``GET /queues``'s answer: each queue's counts and its per-task statistics."""
    task_stats = {
        "type": "object",
        "properties": {
            **_fields({"type": "string"}, "queue", "task"),
            **_fields({"type": "integer"}, "enqueued", "finished", "failed", "running"),
            "throughput": {"type": "number"},
            **_fields(_nullable({"type": "number"}), "run_p50", "run_p95", "wait_p50", "wait_p95"),
        },
    }
    queue = {
        "type": "object",
        "required": ["name", "queued", "running", "tasks"],
        "properties": {
            "name": {"type": "string"},
            **_fields({"type": "integer"}, "queued", "running"),
            "tasks": {"type": "array", "items": task_stats},
            "paused": {"type": "boolean", "description": "Workers start none of its jobs until it is resumed."},
            "waiting_by_priority": {
                "type": "object",
                "additionalProperties": {"type": "integer"},
                "description": "Waiting jobs per priority level (0-9, higher first; 5 is normal).",
            },
        },
    }
    return _list_of("queues", queue)


def _tasks_schema() -> dict[str, Any]:
    """``GET /tasks``'s answer (``describe_task`` of each catalogue entry)."""
    task = {
        "type": "object",
        "required": ["name", "params"],
        "properties": {
            **_fields({"type": "string"}, "name", "description"),
            **_fields({"type": "integer"}, "timeout", "retries"),
            "params": {"type": "array", "items": {"type": "object"}},
        },
    }
    return _list_of("tasks", task)


# -- periodic schedules (``gateway.schedules_api``) -----------------------------------------------

#: A schedule's name, as ``workqueue.schedules.check_name`` takes it.
SCHEDULE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"


def schedule_schemas() -> dict[str, Any]:
    """A schedule as the API shows it, what adding one takes, and the answers of its actions."""
    nullable_string = _nullable({"type": "string"})
    when = {
        "name": {"type": "string", "pattern": SCHEDULE_NAME},
        "cron": {
            "type": "string",
            "maxLength": 200,
            "description": "Cron expression: 5 fields (minute hour day month weekday), or 6 with the seconds "
            "FIRST (`*/2 * * * * *`). Give exactly one of `cron` and `every`; one that does not parse is a 422.",
        },
        "tz": {"type": "string", "maxLength": 64, "description": "IANA time zone of `cron` (default UTC)."},
        "every": {"type": "string", "pattern": r"^\s*[0-9]{1,9}\s*[smhd]?\s*$", "description": "2s, 10m, 1h, 1d."},
        "replace": {"type": "boolean", "default": False, "description": "Redefine the schedule if it exists."},
    }
    common = {k: v for k, v in _common_fields().items() if k != "callback"}
    return {
        "Schedule": {
            "type": "object",
            "required": ["name", "kind", "spec", "tz", "task", "params", "queue", "paused", "fired"],
            "properties": {
                **_fields({"type": "string"}, "name", "spec", "tz", "when", "task", "queue", "last_outcome"),
                "kind": {"type": "string", "enum": ["cron", "every"]},
                "params": {"type": "object"},
                **_fields(_nullable({"type": "integer"}), "retries", "timeout"),
                "paused": {"type": "boolean"},
                **_fields(nullable_string, "next_run", "last_run", "last_batch"),
                **_fields({"type": "integer"}, "fired", "manual_runs"),
            },
        },
        "Schedules": _list_of("schedules", {"$ref": "#/components/schemas/Schedule"}),
        "ScheduleRequest": {
            "oneOf": [
                {**_variant(t, **when, **common), "required": ["name", *_variant(t)["required"]]}
                for t in task_def.CATALOGUE.values()
            ]
        },
        "ScheduleSaved": {
            "type": "object",
            "required": ["outcome", "schedule"],
            "properties": {
                "outcome": {"type": "string", "enum": ["created", "replaced", "unchanged"]},
                "schedule": {"$ref": "#/components/schemas/Schedule"},
            },
        },
        "NoFields": {"type": "object", "additionalProperties": False, "maxProperties": 0},
        "RunNow": {
            "type": "object",
            "required": ["batch_id", "queue"],
            "properties": _fields({"type": "string"}, "batch_id", "queue"),
        },
    }


# -- Per-key limits (workqueue.limits) -------------------------------------------------------------


def _limit_schemas() -> dict[str, Any]:
    """``POST /limits``'s body, and the rules and keys ``GET /limits`` answers."""
    nullable_string, nullable_integer = _nullable({"type": "string"}), _nullable({"type": "integer"})
    rule = {
        "type": "object",
        "required": ["key", "rate", "concurrency"],
        "properties": {"key": {"type": "string"}, "rate": nullable_string, "concurrency": nullable_integer},
    }
    key = {
        "type": "object",
        "required": ["key", "rule", "rate", "concurrency", "slots_in_use", "waiting"],
        "properties": {
            "key": {"type": "string"},
            **_fields(nullable_string, "rule", "rate"),
            "concurrency": nullable_integer,
            **_fields({"type": "integer"}, "slots_in_use", "waiting"),
        },
    }
    return {
        "LimitSet": {
            "type": "object",
            "required": ["key"],
            "anyOf": [{"required": ["rate"]}, {"required": ["concurrency"]}],
            "additionalProperties": False,
            "description": "At most `rate` starts and `concurrency` running jobs of `key`; a pattern "
            "(domain:*) gives each matching key its own. Give `rate`, `concurrency` or both.",
            "properties": {
                "key": {"type": "string", "pattern": f"^{limits.RULE_PATTERN.pattern}$"},
                "rate": {"type": "string", "pattern": limits.RATE_PATTERN, "description": "N/s, N/m or N/h."},
                "concurrency": {"type": "integer", "minimum": 1, "maximum": limits.CONCURRENCY_MAX},
            },
        },
        "LimitRule": {"type": "object", "required": ["rule"], "properties": {"rule": rule}},
        "Limits": {
            "type": "object",
            "required": ["rules", "keys"],
            "properties": {"rules": {"type": "array", "items": rule}, "keys": {"type": "array", "items": key}},
        },
    }
