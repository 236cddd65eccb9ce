"""The gateway's OpenAPI 3.0 document, written here beside the routes it describes: each route's
operation and answers. The schemas they name are ``schemas``' (generated in part from the task
catalogue, ``enqueue_schema``). The schema-fuzzing test checks every response against it."""

from __future__ import annotations

from typing import Any

from workqueue.gateway.enqueue_schema import JOB_ID
from workqueue.gateway.schemas import SCHEDULE_NAME, _schemas
from workqueue.jobs import QUEUE_NAME
from workqueue.settings import MAX_COUNT, MAX_DEPTH, MAX_TASKS


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
