"""rq-dashboard's routes that are unsafe as shipped, replaced by ones that keep its URLs.

As shipped, these fetch jobs with RQ's default (pickle) serializer, render job data unescaped, or
requeue on a GET. Ours read JSON only, go through ``workqueue.control`` (the functions the
``kill_thread/`` scripts use), and change state on POST only (with the CSRF check every POST gets).
"""

from __future__ import annotations

from flask import Flask, Response, current_app, jsonify, redirect, request, url_for
from rq import Queue
from rq.registry import BaseRegistry

from workqueue import control
from workqueue.dashboard import live
from workqueue.dashboard.security import actor
from workqueue.errors import BadInput
from workqueue.policy import SERIALIZER, CatalogueJob

_REGISTRIES = ("failed", "deferred", "started", "finished", "canceled", "scheduled")


def _result(stops: list[control.JobStop]) -> Response:
    return jsonify(status="OK" if all(s.found for s in stops) else "ERROR", count=len(stops),
                   messages=[s.message for s in stops])


def job_view(instance_number: int, job_id: str) -> Response:
    """rq-dashboard's job page rendered job data unescaped: ours shows the same job, escaped."""
    return redirect(url_for("workqueue.job_page", job_id=job_id))


def workers_overview(instance_number: int) -> Response:
    """Its workers page rendered call strings unescaped and unpickled current jobs: ours has both."""
    return redirect(url_for("workqueue.live_page"))


def list_workers(instance_number: int) -> Response:
    return jsonify(workers=live.workers(current_app.redis_conn, live.running_jobs(current_app.redis_conn)))


def delete_job_view(job_id: str) -> Response:
    return _result([control.delete_job(current_app.redis_conn, job_id)])


def requeue_job_view(job_id: str) -> Response:
    return _result([control.requeue(current_app.redis_conn, job_id, by=actor())])


def requeue_all(queue_name: str) -> Response:
    """rq-dashboard accepts GET here, so a link or an <img> could requeue every failed job."""
    if request.method != "POST":
        response = jsonify(error="requeueing changes state: POST it, with the CSRF token")
        response.status_code, response.headers["Allow"] = 405, "POST"
        return response
    try:
        return _result(control.requeue_failed(current_app.redis_conn, queue_name, by=actor()))
    except BadInput as exc:
        return _bad(str(exc))


def empty_queue(queue_name: str, registry_name: str) -> Response:
    """Empty a queue (cancelling its jobs) or delete a registry's jobs, fetched as JSON."""
    connection = current_app.redis_conn
    try:
        if registry_name == "queued":
            return _result(control.cancel_queued(connection, queue_name, by=actor()))
        if registry_name not in _REGISTRIES:
            return _bad(f"no registry named {registry_name!r}; expected queued or one of {', '.join(_REGISTRIES)}")
        queue = Queue(queue_name, connection=connection, serializer=SERIALIZER, job_class=CatalogueJob)
        registry: BaseRegistry = getattr(queue, f"{registry_name}_job_registry")
        return _result([control.delete_job(connection, job_id) for job_id in registry.get_job_ids(cleanup=False)])
    except BadInput as exc:
        return _bad(str(exc))


def _bad(message: str) -> Response:
    response = jsonify(status="ERROR", error=message)
    response.status_code = 400
    return response


REPLACED = {
    "job_view": job_view,
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
