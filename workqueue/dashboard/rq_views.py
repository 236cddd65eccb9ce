"""rq-dashboard's routes that are unsafe as shipped, replaced by ones that keep its URLs.

As shipped, these fetch jobs with RQ's default (pickle) serializer, render job data unescaped,
requeue on a GET, or answer 500 for a job that is not JSON, an unknown registry, ``per_page`` 0 or
an instance that does not exist. Ours read JSON only (an unreadable job is listed as such), go
through ``workqueue.control`` (the functions the ``kill_thread/`` scripts use), change state on POST
only (with the CSRF check every POST gets), and answer 404 for URLs that name nothing.
"""

from __future__ import annotations

import math
from typing import Any

import redis
from flask import Flask, Response, abort, current_app, jsonify, redirect, request, url_for
from flask.typing import RouteCallable
from rq import Queue
from rq.job import JobStatus
from rq.registry import BaseRegistry
from werkzeug.wrappers import Response as BaseResponse

from workqueue import control, dependencies, job_json, priorities
from workqueue.dashboard import live
from workqueue.dashboard.security import actor
from workqueue.errors import BadInput, UnreadableJob
from workqueue.jobs import SERIALIZER, UNREADABLE, CatalogueJob, fetch_job
from workqueue.settings import MAX_PER_PAGE

_REGISTRIES = ("failed", "deferred", "started", "finished", "canceled", "scheduled")


def _connection() -> redis.Redis:
    """The Redis of the instance the URL names, which rq-dashboard's ``before_request`` puts on the app."""
    connection: redis.Redis = current_app.redis_conn  # type: ignore[attr-defined]  # set by rq-dashboard
    return connection


def _result(stops: list[control.JobStop]) -> Response:
    return jsonify(
        status="OK" if all(s.found for s in stops) else "ERROR", count=len(stops), messages=[s.message for s in stops]
    )


def job_view(instance_number: int, job_id: str) -> BaseResponse:
    """rq-dashboard's job page rendered job data unescaped: ours shows the same job, escaped."""
    return redirect(url_for("workqueue.job_page", job_id=job_id))


def workers_overview(instance_number: int) -> BaseResponse:
    """Its workers page rendered call strings unescaped and unpickled current jobs: ours has both."""
    return redirect(url_for("workqueue.live_page"))


def list_workers(instance_number: int) -> Response:
    return jsonify(workers=live.workers(_connection(), live.running_jobs(_connection())))


def delete_job_view(job_id: str) -> Response:
    return _result([control.delete_job(_connection(), job_id)])


def requeue_job_view(job_id: str) -> Response:
    return _result([control.requeue(_connection(), job_id, by=actor())])


def requeue_all(queue_name: str) -> Response:
    """rq-dashboard accepts GET here, so a link or an <img> could requeue every failed job."""
    if request.method != "POST":
        response = jsonify(error="requeueing changes state: POST it, with the CSRF token")
        response.status_code, response.headers["Allow"] = 405, "POST"
        return response
    try:
        return _result(control.requeue_failed(_connection(), queue_name, by=actor()))
    except BadInput as exc:
        return _bad(str(exc))


def empty_queue(queue_name: str, registry_name: str) -> Response:
    """Empty a queue (cancelling its jobs) or delete a registry's jobs, fetched as JSON."""
    connection = _connection()
    try:
        if registry_name == "queued":
            return _result(control.cancel_queued(connection, queue_name, by=actor()))
        if registry_name not in _REGISTRIES:
            return _bad(f"no registry named {registry_name!r}; expected queued or one of {', '.join(_REGISTRIES)}")
        queue = Queue(queue_name, connection=connection, serializer=SERIALIZER, job_class=CatalogueJob)
        registry: BaseRegistry = getattr(queue, f"{registry_name}_job_registry")
        ids = registry.get_job_ids(cleanup=False)
        return _result(control.each_job(ids, lambda job_id: control.delete_job(connection, job_id)))
    except BadInput as exc:
        return _bad(str(exc))


def check_arguments() -> None:
    """404 for an rq-dashboard URL that names nothing: an instance other than 0 (there is one
    Redis), an unknown registry or sort order, a page or page size out of bounds. rq-dashboard
    answered these with a 500 (LookupError, UnboundLocalError, ZeroDivisionError)."""
    if request.blueprint != "rq_dashboard" or not request.view_args:
        return
    args = request.view_args
    if args.get("instance_number", 0) != 0:
        abort(404, "no such rq-dashboard instance: there is one, number 0")
    if "registry_name" in args and args["registry_name"] not in ("queued", *_REGISTRIES):
        abort(404, f"no such registry; expected queued or one of {', '.join(_REGISTRIES)}")
    if "order" in args and args["order"] not in ("asc", "dsc"):
        abort(404, "no such order; expected asc or dsc")
    for name, high in (("per_page", MAX_PER_PAGE), ("page", None)):
        if name in args and not _in_bounds(args[name], high):
            abort(404, f"{name} must be a whole number from 1" + (f" to {high}" if high else ""))


def _in_bounds(value: Any, high: int | None) -> bool:
    text = str(value)
    return text.isdigit() and len(text) <= 9 and 1 <= int(text) <= (high or 10**9)


def job_info(instance_number: int, job_id: str) -> Response:
    """rq-dashboard's job data, read by RQ's Job.fetch (a 500 for anything not JSON): ours."""
    job = job_json.job_detail(_connection(), job_id)  # UnreadableJob: a 422 (app.py)
    if job is None:
        abort(404, f"no such job: {job_id}")
    return jsonify(job)


def list_jobs(
    instance_number: int, queue_name: str, registry_name: str, per_page: str, order: str, page: str
) -> Response:
    """One page of a queue's or registry's jobs, each read as JSON on its own: an unreadable one
    is listed as such (its description says why), never a 500 for the page."""
    per_page_n, page_n = int(per_page), int(page)  # checked by check_arguments
    connection = _connection()
    queue = Queue(queue_name, connection=connection, serializer=SERIALIZER, job_class=CatalogueJob)
    registry: BaseRegistry | None = None
    if registry_name == "queued":
        total = priorities.waiting(connection, queue_name)
    else:
        registry = getattr(queue, f"{registry_name}_job_registry")
        total = registry.get_job_count(cleanup=False)
    offset = (page_n - 1) * per_page_n
    if order == "asc":
        low, high = offset, offset + per_page_n
    else:  # counted from the end
        low, high = max(0, total - offset - per_page_n), total - offset
    ids: list[str] = []
    if high > low:
        if registry is None:
            ids = priorities.waiting_ids(connection, queue_name, low, high - low)  # every level, highest first
        else:
            ids = registry.get_job_ids(low, high - 1, cleanup=False)
    if order == "dsc":
        ids.reverse()
    jobs = [row for row in (_job_row(connection, job_id) for job_id in ids) if row is not None]
    last = max(1, math.ceil(total / per_page_n))

    def link(number: int) -> dict[str, Any]:
        return {
            "number": number,
            "url": url_for(
                "rq_dashboard.jobs_overview",
                instance_number=0,
                queue_name=queue_name,
                registry_name=registry_name,
                per_page=per_page_n,
                order=order,
                page=number,
            ),
        }

    window = range(max(1, min(page_n - 5, last - 9)), min(last, max(page_n - 5, 1) + 9) + 1)
    pagination = {
        "current_page": page_n,
        "num_pages": math.ceil(total / per_page_n),
        "pages_in_window": [link(n) for n in window],
        "first_page": link(1),
        "last_page": link(last),
    }
    if page_n > 1:
        pagination["prev_page"] = link(page_n - 1)
    if page_n < last:
        pagination["next_page"] = link(page_n + 1)
    return jsonify(name=queue_name, registry_name=registry_name, jobs=jobs, pagination=pagination)


def _job_row(connection: redis.Redis, job_id: str) -> dict[str, Any] | None:
    """A job as rq-dashboard's list shows it; one that is not JSON, as unreadable; None if gone."""
    try:
        job = fetch_job(connection, job_id)
    except UnreadableJob as exc:
        return {
            "id": job_id,
            "description": f"unreadable: {exc}",
            "unreadable": True,
            "exc_info": None,
            "created_at": None,
            "started_at": None,
            "ended_at": None,
        }
    if job is None:
        return None
    unreadable = False
    try:
        latest = job.latest_result()
        exc_info = latest.exc_string if latest is not None else None
    except UNREADABLE:
        exc_info, unreadable = "unreadable: the job's result is not JSON (not written by workqueue); left alone", True
    return {
        "id": job.id,
        "description": job.description,
        "unreadable": unreadable,
        "exc_info": exc_info,
        "created_at": job_json.iso(job.created_at),
        "started_at": job_json.iso(job.started_at),
        "ended_at": job_json.iso(job.ended_at),
        **_waits(connection, job),
    }


def _waits(connection: redis.Redis, job: CatalogueJob) -> dict[str, Any]:
    """When a scheduled job is due, what a deferred one waits for (issue 15): for the registries' lists."""
    status = job.get_status(refresh=False)
    if status == JobStatus.SCHEDULED:
        return {"scheduled_for": job_json.scheduled_for(connection, job)}
    if status == JobStatus.DEFERRED:
        return {"waiting_for": dependencies.waiting_for(connection, job)}
    return {}


def _bad(message: str) -> Response:
    response = jsonify(status="ERROR", error=message)
    response.status_code = 400
    return response


REPLACED: dict[str, RouteCallable] = {
    "job_view": job_view,
    "job_info": job_info,
    "list_jobs": list_jobs,
    "workers_overview": workers_overview,
    "list_workers": list_workers,
    "delete_job_view": delete_job_view,
    "requeue_job_view": requeue_job_view,
    "requeue_all": requeue_all,
    "empty_queue": empty_queue,
}


def replace_unsafe_views(app: Flask) -> None:
    """Swap rq-dashboard's unsafe view functions for ours, keeping its URLs (and its pages' links)."""
    for name, view in REPLACED.items():
        endpoint = f"rq_dashboard.{name}"
        if endpoint not in app.view_functions:
            raise RuntimeError(f"rq-dashboard has no view {endpoint}; its version changed, review rq_views")
        app.view_functions[endpoint] = view
    app.before_request(check_arguments)
