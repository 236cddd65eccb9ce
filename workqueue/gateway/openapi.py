"""The gateway's OpenAPI 3.0 document, written here beside the routes it describes and generated in
part from the task catalogue (each task's parameters, types and bounds). The schema-fuzzing test
checks every response against it."""

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
    MAX_COUNT,
    MAX_DEPTH,
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
#: A job's statuses as the document lists them.
_JOB_STATUSES = ("queued", "finished", "failed", "started", "deferred", "scheduled", "stopped", "canceled", "created")


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


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


def _fields(schema: dict[str, Any], *names: str) -> dict[str, Any]:
    """Properties ``names``, each typed by (a copy of) ``schema``."""
    return {name: dict(schema) for name in names}


def _list_of(name: str, item: dict[str, Any]) -> dict[str, Any]:
    """An answer holding one list, ``name``, of ``item``."""
    return {"type": "object", "required": [name], "properties": {name: {"type": "array", "items": item}}}


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


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _ok(description: str, schema: str, status: str = "200") -> dict[str, Any]:
    return {
        status: {
            "description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
        }
    }


_NOT_JSON = f"The body is not JSON, or nests arrays and objects deeper than {MAX_DEPTH} levels."
_AUTH = {"401": _error("A bearer token is required and was not given, or is wrong.")}
_BAD_BODY = {
    "413": _error("The body is over the size limit."),
    "422": _error("The body, a task, a parameter or the callback URL is refused: `error` says why, `field` names it."),
    "503": _error("Redis is not answering (or, with durable, no replica acknowledged the jobs)."),
}


def document() -> dict[str, Any]:
    """The whole document, built afresh (the catalogue is read at each call)."""
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "workqueue gateway",
            "version": "1.0.0",
            "description": "Enqueue catalogue tasks, follow and cancel them, over HTTP; results come back "
            f"by signed callback. One request enqueues at most {MAX_TASKS:,} tasks ({MAX_COUNT:,} "
            "per producer run from the command line).",
        },
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Required when the gateway was given a token.",
                }
            },
        },
        "security": [{}, {"bearer": []}],
        "paths": {**_collection_paths(), **_item_paths(), **schedule_paths(), **_limit_paths()},
    }


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


def _operation(summary: str, operation_id: str, responses: dict[str, Any], body: str | None = None) -> dict[str, Any]:
    """One route's operation; ``body`` names the schema of its JSON request body, if it takes one."""
    request_body = {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}},
    }
    return {
        "summary": summary,
        "operationId": operation_id,
        **({"requestBody": request_body} if body else {}),
        "responses": responses,
    }


def _collection_paths() -> dict[str, Any]:
    """The routes without a path parameter: health, the catalogue, queues, and the two enqueues."""
    down = "Redis does not answer, or a helper thread is down (it is being restarted)."
    health = {**_ok("All is well.", "Health"), **_AUTH, **_ok(down, "Health", "503")}
    queues = {**_ok("Per queue and task.", "Queues"), **_AUTH, "503": _BAD_BODY["503"]}
    enqueued = {**_ok("Enqueued.", "Enqueued", "201"), **_AUTH, "400": _error(_NOT_JSON), **_BAD_BODY}
    return {
        "/health": {"get": _operation("Whether Redis answers and the helper threads run", "health", health)},
        "/tasks": {
            "get": _operation(
                "The task catalogue", "listTasks", {**_ok("Every task and its parameters.", "Tasks"), **_AUTH}
            )
        },
        "/queues": {"get": _operation("Queues and their statistics", "listQueues", queues)},
        "/jobs": {
            "post": _operation(
                "Enqueue one task (count times), as one batch", "enqueueJob", dict(enqueued), "EnqueueOne"
            )
        },
        "/batches": {
            "post": _operation("Enqueue several tasks as one batch", "enqueueBatch", dict(enqueued), "EnqueueBatch")
        },
        **_queue_state_paths(),
    }


def _queue_state_paths() -> dict[str, Any]:
    """Pausing and resuming one queue (``workqueue.pausing``)."""
    name = {
        "name": "name",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": f"^{QUEUE_NAME.pattern}$"},
    }
    paths = {}
    for verb, summary in (
        ("pause", "Pause a queue: workers on every machine start none of its jobs (running ones finish)"),
        ("resume", "Resume a paused queue"),
    ):
        answers = {
            **_ok("What was done.", "Message"),
            **_AUTH,
            "400": _error(_NOT_JSON),
            "413": _BAD_BODY["413"],
            "409": _error(f"The queue is already {'paused' if verb == 'pause' else 'running'}."),
            "404": _error("No such route (the name holds a '/')."),
            "422": _error("The queue name is invalid, or the body is not {}."),
            "503": _BAD_BODY["503"],
        }
        paths[f"/queues/{{name}}/{verb}"] = {
            "parameters": [name],
            "post": _operation(summary, f"{verb}Queue", answers, "NoFields"),
        }
    return paths


def _item_paths() -> dict[str, Any]:
    """The routes on one job or one batch: read it, or cancel it."""
    job_id = {"type": "string", "pattern": f"^{JOB_ID.pattern}$"}
    batch_id = {"type": "string", "maxLength": 64}

    def responses(ok: dict[str, Any], missing: str, unreadable: str | None) -> dict[str, Any]:
        """An item route's answers: ``ok``, 401, 404 (``missing``), 422 (``unreadable``) and 503."""
        refused = {"422": _error(unreadable)} if unreadable else {}
        return {**ok, **_AUTH, "404": _error(missing), **refused, "503": _BAD_BODY["503"]}

    no_job, unreadable_job = "No such job.", "The job is not readable as JSON."
    return {
        "/jobs/{job_id}": {
            "parameters": [{"name": "job_id", "in": "path", "required": True, "schema": job_id}],
            "get": _operation(
                "A job: status, progress, result, error",
                "getJob",
                responses(_ok("The job.", "Job"), no_job, unreadable_job),
            ),
            "delete": _operation(
                "Stop a running job or cancel a waiting one",
                "cancelJob",
                responses(_ok("What was done.", "Message"), no_job, unreadable_job),
            ),
        },
        "/batches/{batch_id}": {
            "parameters": [{"name": "batch_id", "in": "path", "required": True, "schema": batch_id}],
            "get": _operation(
                "A batch: counts and each job's status",
                "getBatch",
                responses(_ok("The batch.", "Batch"), "No such batch.", None),
            ),
            "delete": _operation(
                "Cancel a batch's waiting jobs and stop its running ones",
                "cancelBatch",
                responses(_ok("What was done, per job.", "Messages"), "No such batch.", "A job is not readable."),
            ),
        },
    }


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


def schedule_paths() -> dict[str, Any]:
    """``/schedules`` and the actions on one schedule."""
    name = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string", "pattern": SCHEDULE_NAME}}]
    missing = {"404": _error("No schedule of that name.")}
    body_errors = {"400": _error(_NOT_JSON), **_BAD_BODY}
    listed = {**_ok("Every schedule, by name.", "Schedules"), **_AUTH, "503": _BAD_BODY["503"]}
    added = {**_ok("Created, redefined or unchanged.", "ScheduleSaved", "201"), **_AUTH, **body_errors}
    one = {**_ok("The schedule.", "Schedule"), **_AUTH, **missing, "503": _BAD_BODY["503"]}
    removed = {**_ok("Removed.", "Message"), **_AUTH, **missing, "503": _BAD_BODY["503"]}
    paused = {**_ok("The schedule, paused or resumed.", "Schedule"), **_AUTH, **missing, **body_errors}
    paused["422"] = _error("Already in that state, or the body is not an empty object.")
    ran = {**_ok("One batch enqueued now (not a tick).", "RunNow", "201"), **_AUTH, **missing, **body_errors}

    def action(summary: str, operation_id: str, responses: dict[str, Any]) -> dict[str, Any]:
        return {"parameters": name, "post": _operation(summary, operation_id, responses, "NoFields")}

    return {
        "/schedules": {
            "get": _operation("Periodic schedules, with next and last run", "listSchedules", listed),
            "post": _operation("Add (or with replace, redefine) a schedule", "addSchedule", added, "ScheduleRequest"),
        },
        "/schedules/{name}": {
            "parameters": name,
            "get": _operation("One schedule", "getSchedule", one),
            "delete": _operation("Remove a schedule (its batches stay)", "removeSchedule", removed),
        },
        "/schedules/{name}/pause": action("Pause a schedule: no consumer fires it", "pauseSchedule", paused),
        "/schedules/{name}/resume": action(
            "Resume a schedule from its next tick (missed ticks skipped)", "resumeSchedule", dict(paused)
        ),
        "/schedules/{name}/run-now": action("Enqueue one batch of a schedule now", "runScheduleNow", ran),
    }


def _limit_paths() -> dict[str, Any]:
    """List, set and remove per-key limits."""
    key = {"type": "string", "minLength": 1, "maxLength": 400}
    gone = {"404": _error("No limit on that key."), "503": _BAD_BODY["503"]}
    refused = {"422": _error("A malformed rate, a concurrency under 1, neither given, or a bad key."), **_AUTH}
    return {
        "/limits": {
            "get": _operation(
                "Every rule, and each key in use: its limit, slots in use and jobs waiting",
                "listLimits",
                {**_ok("The limits.", "Limits"), **_AUTH, "503": _BAD_BODY["503"]},
            ),
            "post": _operation(
                "Set the limit of a key or pattern (replacing its old one)",
                "setLimit",
                {**_ok("The rule set.", "LimitRule"), "400": _error(_NOT_JSON), **_BAD_BODY, **refused},
                "LimitSet",
            ),
        },
        "/limits/{key}": {
            "parameters": [{"name": "key", "in": "path", "required": True, "schema": key}],
            "delete": _operation(
                "Remove the limit set on a key or pattern",
                "removeLimit",
                {**_ok("What was done.", "Message"), **_AUTH, **gone},
            ),
        },
    }
