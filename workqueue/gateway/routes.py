"""The gateway's routes, one function each, on a Flask Blueprint; what they share (the Redis
connection, the token, the network policy, the helper threads, the guard) is a :class:`Gateway` in
the app's ``extensions``, set by ``app.create_app``; their bodies are read, and refused, by ``bodies``.
The hooks and error handlers are the app's (``before_app_request``, ``app_errorhandler``): they
answer for URLs no route matches too."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis
from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

import task_def
from workqueue import (
    batches,
    control,
    dependencies,
    job_json,
    jobstats,
    limits,
    network,
    outage,
    pausing,
    producer,
    webguard,
)
from workqueue import calls as task_calls
from workqueue.errors import BadInput, NotDurable, RedisLostData, UnreadableJob
from workqueue.gateway import delivery, enqueue_schema
from workqueue.gateway.bodies import (
    Invalid,
    _batch_calls,
    _body,
    _call,
    _callback,
    _integer,
    _unique_calls,
    _when,
    _with_priority,
)
from workqueue.jobs import check_queue_name
from workqueue.settings import DEFAULT_QUEUE, GATEWAY_MAX_BODY, MAX_TASKS
from workqueue.supervision import Supervisor

log = logging.getLogger(__name__)

bp = Blueprint("gateway", __name__)

#: The key of the app's ``extensions`` holding its :class:`Gateway`.
EXTENSION = "workqueue.gateway"

_COMMON = {"queue", "retries", "timeout", "callback", "unique", "priority", "limit_key"}
_COMMON |= {"at", "in", "after", "after_any"}  # when work runs (issue 15)
#: ``"durable": true``: the enqueue is answered only once a replica holds it (``WAIT 1``), else 503.
_COMMON |= {"durable"}
#: ``"result_ttl": seconds``: how long each finished job and its result are kept (memory per job, issue 18).
_COMMON |= {"result_ttl"}


@dataclass(frozen=True)
class Gateway:
    """What the routes share, one per app."""

    connection: redis.Redis
    #: Every request needs ``Authorization: Bearer <token>`` when set.
    token: str | None
    #: The threads delivering callbacks, shown by ``GET /health``.
    helpers: Supervisor | None
    #: What callback URLs must pass.
    policy: network.NetworkPolicy
    guard: webguard.Guard
    #: Tells a Redis that came back empty (``outage.DataMark``).
    mark: outage.DataMark
    #: The OpenAPI document, built once.
    document: dict[str, Any]


def _gateway() -> Gateway:
    gateway: Gateway = current_app.extensions[EXTENSION]
    return gateway


def error(status: int, message: str, field: str | None = None) -> Response:
    """The API's one error shape: ``{"error": message, "field": field}``."""
    response = jsonify({"error": message, "field": field})
    response.status_code = status
    return response


# --- before every request, and the errors ---------------------------------------------------------


@bp.before_app_request
def authenticate() -> Response | None:
    """With a token, a request without it is a 401 (and counts toward the guard's backoff)."""
    gateway = _gateway()
    if gateway.token is None:
        return None
    throttled = gateway.guard.throttled(error)
    if throttled is not None:
        return throttled
    given = request.headers.get("Authorization", "")
    if not (given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), gateway.token.encode())):
        gateway.guard.failed()
        response = error(401, "a bearer token is required: Authorization: Bearer <token>")
        response.headers["WWW-Authenticate"] = 'Bearer realm="workqueue"'
        return response
    gateway.guard.succeeded()
    return None


#: The routes that enqueue: they read the data mark inside their enqueueing transaction instead
#: (``_enqueue``), which spares each request a round trip of its own.
_ENQUEUEING = frozenset({"gateway.enqueue_one", "gateway.enqueue_batch"})


@bp.before_app_request
def same_data() -> None:
    """Redis that came back empty is said once (503), not shown as empty queues and unknown jobs."""
    if request.endpoint in _ENQUEUEING:
        return
    gateway = _gateway()
    gateway.mark.check(gateway.connection, probe_writes=False)


@bp.app_errorhandler(HTTPException)
def http_error(exc: HTTPException) -> Response:
    messages = {
        404: "no such resource",
        405: f"{request.method} is not allowed here",
        413: f"request body over {GATEWAY_MAX_BODY:,} bytes",
    }
    code = exc.code or 500
    response = error(code, messages.get(code, exc.description or exc.name))
    if exc.code == 405 and exc.get_response().headers.get("Allow"):
        response.headers["Allow"] = exc.get_response().headers["Allow"]
    return response


@bp.app_errorhandler(Invalid)
def invalid(exc: Invalid) -> Response:
    return error(exc.status, str(exc), exc.field)


@bp.app_errorhandler(UnreadableJob)
def unreadable(exc: UnreadableJob) -> Response:
    return error(422, str(exc))


@bp.app_errorhandler(redis.RedisError)
def redis_down(exc: redis.RedisError) -> Response:
    log.warning("Redis error: %s", exc)
    return error(503, f"{outage.describe(exc)}; try again")


@bp.app_errorhandler(RedisLostData)
def lost_data(exc: RedisLostData) -> Response:
    log.error("%s", exc)
    return error(503, str(exc))


@bp.app_errorhandler(Exception)
def unexpected(exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.path)
    return error(500, "internal error (logged by the gateway)")


# --- the routes -----------------------------------------------------------------------------------


@bp.get("/openapi.json")
def schema() -> Response:
    return jsonify(_gateway().document)


@bp.get("/health")
def health() -> tuple[Response, int]:
    gateway = _gateway()
    threads = gateway.helpers.status() if gateway.helpers is not None else []
    try:
        redis_up = bool(gateway.connection.ping())
    except redis.RedisError:
        redis_up = False
    ok = redis_up and all(t["up"] for t in threads)
    return jsonify({"ok": ok, "redis": redis_up, "helpers": threads}), 200 if ok else 503


@bp.get("/tasks")
def tasks() -> Response:
    return jsonify({"tasks": [enqueue_schema.describe_task(t) for t in task_def.CATALOGUE.values()]})


@bp.get("/queues")
def queues() -> Response:
    return jsonify({"queues": [_queue_stats(q) for q in jobstats.collect(_gateway().connection)]})


#: The fields of each enqueue request (made once, not per request).
_ONE_FIELDS = frozenset({"task", "params", "count"} | _COMMON)
_BATCH_FIELDS = frozenset({"tasks"} | _COMMON)


@bp.post("/jobs")
def enqueue_one() -> tuple[Response, int]:
    body = _body(_ONE_FIELDS)
    count = _integer(body, "count", 1, MAX_TASKS, default=1)
    call = _call(body, body.get("retries"), body.get("timeout"), "", body.get("limit_key"))
    return _enqueue(body, [call] * count)


@bp.post("/batches")
def enqueue_batch() -> tuple[Response, int]:
    body = _body(_BATCH_FIELDS)
    entries = body.get("tasks")
    if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_TASKS:
        raise Invalid(f"tasks: expected a list of 1 to {MAX_TASKS} tasks", "tasks")
    return _enqueue(body, _batch_calls(entries, body.get("retries"), body.get("timeout"), body.get("limit_key")))


@bp.get("/jobs/<job_id>")
def job(job_id: str) -> Response:
    found = job_json.job_detail(_gateway().connection, job_id) if enqueue_schema.JOB_ID.fullmatch(job_id) else None
    if found is None:
        return error(404, f"no such job: {job_id}")
    return jsonify(found)


@bp.delete("/jobs/<job_id>")
def cancel_job(job_id: str) -> Response:
    if not enqueue_schema.JOB_ID.fullmatch(job_id):
        return error(404, f"no such job: {job_id}")
    outcome = control.stop_job(_gateway().connection, job_id, by=f"gateway ({request.remote_addr})", timeout=5.0)
    if outcome.outcome is control.Outcome.UNREADABLE:
        return error(422, outcome.message)
    return jsonify({"message": outcome.message}) if outcome.found else error(404, outcome.message)


@bp.get("/batches/<batch_id>")
def batch(batch_id: str) -> Response:
    connection = _gateway().connection
    try:
        summary = batches.summary(connection, batch_id)
    except KeyError:
        return error(404, f"no such batch: {batch_id} (batches are kept for a day)")
    return jsonify(
        {
            "batch_id": batch_id,
            "queue": summary.queue,
            "total": summary.total,
            "finished": summary.finished,
            "failed": summary.failed,
            "done": summary.done,
            "elapsed": summary.elapsed,
            "jobs": [{"id": i, "status": s or "expired"} for i, s in batches.job_statuses(connection, batch_id)],
        }
    )


@bp.delete("/batches/<batch_id>")
def cancel_batch(batch_id: str) -> Response:
    by = f"gateway ({request.remote_addr})"
    try:
        stops = control.stop_batch(_gateway().connection, batch_id, by=by, timeout=5.0)
    except BadInput as exc:
        return error(404, str(exc))
    return jsonify({"messages": [s.message for s in stops]})


# --- pausing a queue (workqueue.pausing) ----------------------------------------------------------


@bp.post("/queues/<name>/pause")
def pause_queue(name: str) -> Response:
    return _queue_state(name, pausing.pause, "paused")


@bp.post("/queues/<name>/resume")
def resume_queue(name: str) -> Response:
    return _queue_state(name, pausing.resume, "resumed")


def _queue_state(name: str, change: Any, done: str) -> Response:
    """Pause or resume queue ``name``: 422 for an invalid name, 409 if it already is so. The body
    is ``{}``: a JSON body is what keeps a cross-site form from posting here (``webguard``)."""
    _body(set())
    try:
        change(_gateway().connection, name)
    except pausing.QueueStateConflict as exc:
        return error(409, str(exc), "queue")
    except BadInput as exc:
        return error(422, str(exc), "queue")
    return jsonify({"message": f"queue {name} {done}"})


# --- per-key limits (workqueue.limits) ------------------------------------------------------------


@bp.get("/limits")
def list_limits() -> Response:
    """Every rule, and each key in use: its limit, slots in use and jobs waiting."""
    connection = _gateway().connection
    return jsonify(
        {
            "rules": [rule.as_json() for rule in limits.rules(connection)],
            "keys": [state.as_json() for state in limits.key_states(connection, time.time())],
        }
    )


@bp.post("/limits")
def set_limit() -> tuple[Response, int]:
    body = _body({"key", "rate", "concurrency"})
    key, rate, concurrency = body.get("key"), body.get("rate"), body.get("concurrency")
    if not isinstance(key, str):
        raise Invalid("key: expected a key or pattern, e.g. domain:*", "key")
    if rate is not None and not isinstance(rate, str):
        raise Invalid(f"rate: expected N/s, N/m or N/h, got {rate!r}", "rate")
    if concurrency is not None and (isinstance(concurrency, bool) or not isinstance(concurrency, int)):
        raise Invalid(f"concurrency: expected an integer >= 1, got {concurrency!r}", "concurrency")
    try:
        rule = limits.make_rule(key, rate, concurrency)
    except BadInput as exc:
        raise Invalid(str(exc), exc.field) from None
    limits.set_rule(_gateway().connection, rule)
    return jsonify({"rule": rule.as_json()}), 200


@bp.delete("/limits/<path:key>")
def remove_limit(key: str) -> Response:
    try:
        rule = limits.remove_rule(_gateway().connection, key)
    except BadInput as exc:
        return error(404, str(exc))
    return jsonify({"message": f"removed the limit on {rule.pattern} ({rule.describe()})"})


# --- what the routes share ------------------------------------------------------------------------


def _enqueue(body: Mapping[str, Any], calls: list[producer.TaskCall]) -> tuple[Response, int]:
    """Enqueue ``calls`` as one batch on the body's queue, registering its callback if it has one."""
    gateway = _gateway()
    queue = body.get("queue", DEFAULT_QUEUE)
    try:
        check_queue_name(queue)
    except BadInput as exc:
        raise Invalid(str(exc), "queue") from None
    when, after, after_any = _when(body)
    calls = _unique_calls(body.get("unique"), calls)
    calls = _with_priority(body, calls)
    calls = list(task_calls.keeping_results(calls, _integer(body, "result_ttl", 0, task_calls.MAX_RESULT_TTL)))
    batch_id = batches.new_id()
    if after:  # checked before the callback is registered: a refused request leaves nothing behind
        gateway.mark.check(gateway.connection, probe_writes=False)  # lost data: 503, not "no such job"
        try:
            after = dependencies.resolve(gateway.connection, after)
        except BadInput as exc:
            raise Invalid(str(exc), "after") from None
    if "callback" in body:
        delivery.register(gateway.connection, batch_id, *_callback(body["callback"], gateway.policy))
    durable = body.get("durable", False)
    if not isinstance(durable, bool):
        raise Invalid("durable: expected true or false", "durable")
    try:
        submission = producer.enqueue(
            gateway.connection, calls, queue, batch_id=batch_id, when=when, after=after, after_any=after_any,
            durable=durable, mark=True,
        )  # fmt: skip
    except BadInput as exc:
        raise Invalid(str(exc), exc.field) from None
    except NotDurable as exc:
        return error(503, str(exc), "durable"), 503
    if submission.mark is not None and submission.mark.fresh and submission.mark.id != gateway.mark.id:
        # The jobs are in the Redis that answers now, so this is their answer; the gateway's own mark
        # is left as it was, so that the next request that reads says the loss (503), once.
        log.error("Redis lost its data (restarted without persistence?) before batch %s was enqueued", batch_id)
    existing = [submission.existing[i] for i in sorted(submission.existing)]
    answer = {"batch_id": batch_id, "queue": queue, "job_ids": [job.id for job in submission.jobs]}
    return jsonify({**answer, "existing_job_ids": existing}), 201


def _queue_stats(q: jobstats.QueueStats) -> dict[str, Any]:
    return {
        "name": q.queue,
        "queued": q.queued,
        "running": q.running,
        "tasks": [t.as_dict() for t in q.tasks.values()],
        "paused": q.paused,
        "waiting_by_priority": {str(level): count for level, count in q.by_level.items()},
    }
