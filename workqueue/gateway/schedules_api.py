"""The gateway's routes for periodic schedules (``workqueue.schedules``): list, read, add, remove,
pause, resume and run one now. Validation is the command line's (``Schedule.build``, the producer's
``TaskCall.build``); a refusal is a 422 naming the field, an unknown name a 404. Their part of the
OpenAPI document is ``schemas.schedule_schemas`` and ``openapi.schedule_paths``."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from workqueue import schedules
from workqueue.errors import BadInput
from workqueue.gateway.bodies import Invalid, _body, _call
from workqueue.gateway.routes import _gateway, error
from workqueue.settings import DEFAULT_QUEUE

bp = Blueprint("gateway_schedules", __name__)

_ADD_FIELDS = {"name", "cron", "every", "tz", "task", "params", "queue", "retries", "timeout", "replace"}


def _view(stored: schedules.Stored) -> dict[str, Any]:
    connection = _gateway().connection
    return schedules.as_dict(connection, stored, schedules.redis_now(connection))


def _found(name: str) -> schedules.Stored | Response:
    """The schedule, or the 404 that says which exist."""
    try:
        return schedules.get(_gateway().connection, name)
    except BadInput as exc:
        return error(404, str(exc), "name")


@bp.get("/schedules")
def list_schedules() -> Response:
    connection = _gateway().connection
    now = schedules.redis_now(connection)
    return jsonify({"schedules": [schedules.as_dict(connection, s, now) for s in schedules.load_all(connection)]})


@bp.post("/schedules")
def add_schedule() -> tuple[Response, int]:
    body = _body(_ADD_FIELDS)
    for name in ("name", "cron", "every", "tz", "queue"):
        if name in body and not isinstance(body[name], str):
            raise Invalid(f"{name}: expected text", name)
    if not isinstance(body.get("name"), str):
        raise Invalid("name: the schedule's name is required", "name")
    if not isinstance(body.get("replace", False), bool):
        raise Invalid("replace: expected true or false", "replace")
    call = _call(body, body.get("retries"), body.get("timeout"), "")
    try:
        definition = schedules.Schedule.build(
            body["name"], cron=body.get("cron"), every=body.get("every"), tz=body.get("tz"), task=call.task.name,
            params=call.params, queue=body.get("queue", DEFAULT_QUEUE), retries=call.retries, timeout=call.timeout,
        )  # fmt: skip
        outcome = schedules.add(_gateway().connection, definition, replace=body.get("replace", False))
    except BadInput as exc:
        raise Invalid(str(exc), exc.field) from None
    stored = schedules.get(_gateway().connection, definition.name)
    return jsonify({"outcome": outcome, "schedule": _view(stored)}), 201


@bp.get("/schedules/<name>")
def get_schedule(name: str) -> Response:
    found = _found(name)
    return found if isinstance(found, Response) else jsonify(_view(found))


@bp.delete("/schedules/<name>")
def remove_schedule(name: str) -> Response:
    found = _found(name)
    if isinstance(found, Response):
        return found
    schedules.remove(_gateway().connection, name)
    return jsonify({"message": f"schedule {name}: removed"})


def _set_paused(name: str, paused: bool) -> Response:
    _body(set())  # an empty JSON object
    found = _found(name)
    if isinstance(found, Response):
        return found
    try:
        schedules.set_paused(_gateway().connection, name, paused)
    except BadInput as exc:  # already in that state
        raise Invalid(str(exc), exc.field) from None
    return jsonify(_view(schedules.get(_gateway().connection, name)))


@bp.post("/schedules/<name>/pause")
def pause_schedule(name: str) -> Response:
    return _set_paused(name, True)


@bp.post("/schedules/<name>/resume")
def resume_schedule(name: str) -> Response:
    return _set_paused(name, False)


@bp.post("/schedules/<name>/run-now")
def run_schedule_now(name: str) -> tuple[Response, int] | Response:
    _body(set())
    found = _found(name)
    if isinstance(found, Response):
        return found
    try:
        batch_id = schedules.run_now(_gateway().connection, name)
    except BadInput as exc:  # its task or parameters no longer pass the catalogue
        raise Invalid(str(exc), exc.field) from None
    return jsonify({"batch_id": batch_id, "queue": found.schedule.queue}), 201
