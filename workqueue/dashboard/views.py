"""Our pages beside rq-dashboard's: live work and history, a job, the enqueue form, and the
actions (stop a worker or a job, cancel, requeue), which go through ``workqueue.control`` like
the ``kill_thread/`` scripts. Every action is a POST (CSRF-checked by ``security``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import redis
from flask import (
    Blueprint,
    Response,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from rq.job import JOB_ID_PATTERN, Job
from werkzeug.wrappers import Response as BaseResponse

import task_def
from workqueue import control, job_json, jobstats, pausing, priorities, producer, schedules, timing, unique
from workqueue.dashboard import live
from workqueue.dashboard.security import actor, refusal, wants_html
from workqueue.errors import BadInput
from workqueue.jobs import check_queue_name
from workqueue.settings import DEFAULT_QUEUE, MAX_COUNT, STATS_RETENTION

blueprint = Blueprint("workqueue", __name__)

#: The longest history the charts may ask for (the counters' retention).
MAX_MINUTES = STATS_RETENTION // 60


def _redis() -> redis.Redis:
    connection: redis.Redis = current_app.extensions["workqueue.redis"]
    return connection


def _job_id(text: str) -> str | None:
    text = text.strip()
    return text if 0 < len(text) <= 128 and JOB_ID_PATTERN.fullmatch(text) else None


# Pages -------------------------------------------------------------------------------------------


@blueprint.get("/")
def live_page() -> str:
    return render_template("workqueue/live.html", active_tab="live")


@blueprint.get("/jobs")
def find_job() -> BaseResponse:
    """The search box: a job by id, from every page."""
    wanted = request.args.get("id", "")
    job_id = _job_id(wanted)
    if job_id is None or not _redis().exists(Job.key_for(job_id)):
        message = f"no such job: {wanted.strip()}" if wanted.strip() else "type a job id to look for"
        return Response(render_template("workqueue/message.html", title="Job search", message=message), 404)
    return redirect(url_for(".job_page", job_id=job_id))


@blueprint.get("/jobs/<job_id>")
def job_page(job_id: str) -> Any:
    job = job_json.job_detail(_redis(), job_id) if _job_id(job_id) else None
    if job is None:
        return Response(render_template("workqueue/message.html", title="Job", message=f"no such job: {job_id}"), 404)
    return render_template("workqueue/job.html", job=job, active_tab="live")


@blueprint.get("/enqueue")
def enqueue_page() -> str:
    return render_template("workqueue/enqueue.html", **_form_context({}))


# Data for the pages' scripts ---------------------------------------------------------------------


@blueprint.get("/api/live")
def live_data() -> Response:
    return jsonify(live.snapshot(_redis()))


@blueprint.get("/api/history")
def history_data() -> Response:
    minutes = request.args.get("minutes", 60, type=int)
    if not 1 <= minutes <= MAX_MINUTES:
        return refusal(400, f"minutes: {minutes} is out of bounds, expected 1 <= minutes <= {MAX_MINUTES}")
    connection = _redis()
    tasks = [t.as_dict() for q in jobstats.collect(connection, window=minutes * 60) for t in q.tasks.values()]
    return jsonify({**jobstats.history(connection, minutes), "tasks": tasks})


@blueprint.get("/api/jobs/<job_id>")
def job_data(job_id: str) -> Response:
    job = job_json.job_detail(_redis(), job_id) if _job_id(job_id) else None
    if job is None:
        return refusal(404, f"no such job: {job_id}")
    return jsonify(job)


# Actions -----------------------------------------------------------------------------------------


def _done(stops: list[control.JobStop] | list[str], ok: bool = True) -> BaseResponse:
    """Flash the outcome and go back to the page the form was on, or answer a script in JSON."""
    messages = [s if isinstance(s, str) else s.message for s in stops]
    ok = ok and all(getattr(s, "found", True) for s in stops)
    if not wants_html():
        response = jsonify(ok=ok, messages=messages)
        response.status_code = 200 if ok else 404
        return response
    for message in messages or ["nothing to do"]:
        flash(message, "success" if ok else "danger")
    return redirect(_back(), 303)


def _back() -> str:
    """The page the form was posted from, if it is one of ours; else the live page."""
    referrer = urlsplit(request.referrer or "")
    if referrer.netloc == request.host and referrer.path.startswith("/"):
        return referrer.path + (f"?{referrer.query}" if referrer.query else "")
    return url_for(".live_page")


@blueprint.post("/workers/<name>/stop")
def stop_worker(name: str) -> BaseResponse:
    now = request.form.get("now") == "1"
    workers = control.select_workers(_redis(), name=name)
    (stop,) = control.request_worker_stop(_redis(), workers, now=now, by=actor())
    if now:
        message = f"worker {name} asked to stop at once" + (
            f"; its job {stop.job_id} goes back to the front of its queue" if stop.job_id else ""
        )
    else:
        message = f"worker {name} asked to stop" + (" after its current job" if stop.job_id else "")
    return _done([message])


@blueprint.post("/jobs/<job_id>/stop")
def stop_job(job_id: str) -> BaseResponse:
    return _done([control.stop_job(_redis(), job_id, by=actor(), timeout=5.0)])


@blueprint.post("/jobs/<job_id>/requeue")
def requeue_job(job_id: str) -> BaseResponse:
    return _done([control.requeue(_redis(), job_id, by=actor())])


@blueprint.post("/queues/<name>/cancel")
def cancel_queue(name: str) -> BaseResponse:
    return _done(control.cancel_queued(_redis(), name, by=actor()))


@blueprint.post("/queues/<name>/requeue-failed")
def requeue_failed(name: str) -> BaseResponse:
    return _done(control.requeue_failed(_redis(), name, by=actor()))


@blueprint.post("/queues/<name>/pause")
def pause_queue(name: str) -> BaseResponse:
    return _queue_state(name, pausing.pause, "paused: workers start none of its jobs until it is resumed")


@blueprint.post("/queues/<name>/resume")
def resume_queue(name: str) -> BaseResponse:
    return _queue_state(name, pausing.resume, "resumed")


def _queue_state(name: str, change: Any, done: str) -> BaseResponse:
    """Pause or resume a queue (``workqueue.pausing``); a queue already so is said, not an error page."""
    try:
        change(_redis(), name)
    except pausing.QueueStateConflict as exc:
        return _done([str(exc)], ok=False)
    return _done([f"queue {name} {done}"])


@blueprint.errorhandler(BadInput)
def refused_action(exc: BadInput) -> BaseResponse:
    """An action the control functions refuse (no such worker, a bad queue name): say why."""
    return _done([str(exc)], ok=False)


@blueprint.post("/enqueue")
def enqueue() -> Any:
    """The form's task, parameters, count and queue, validated as the producer validates them."""
    form = request.form
    try:
        call, count, queue = _read_enqueue_form(form)
        when = _read_when(form)
        submission = producer.enqueue(_redis(), [call] * count, queue, when=when)
    except BadInput as exc:
        return Response(render_template("workqueue/enqueue.html", error=str(exc), **_form_context(form)), 422)
    if submission.existing:  # unique: some or all found their job already queued
        found = sorted(set(submission.existing.values()))
        flash(
            f"{len(submission.jobs)} new, {len(submission.existing)} already queued: {call.describe()} on {queue} "
            f"(batch {submission.batch_id}, existing job {found[0]})",
            "success",
        )
        return redirect(url_for(".enqueue_page", task=call.task.name), 303)
    first = submission.jobs[0].id
    runs = f"; runs at {timing.describe(when)}" if when is not None else ""
    flash(
        f"enqueued {count} × {call.describe()} on {queue} (batch {submission.batch_id}, first job {first}){runs}",
        "success",
    )
    return redirect(url_for(".enqueue_page", task=call.task.name), 303)


def _read_enqueue_form(form: Any) -> tuple[producer.TaskCall, int, str]:
    name = form.get("task", "")
    try:
        task = task_def.get_task(name)
    except task_def.TaskDefError as exc:
        raise BadInput(str(exc)) from None
    given = {p.name: form.get(f"{task.name}.{p.name}", "") for p in task.params}
    params = {name: value for name, value in given.items() if value.strip()}  # empty: the default
    key = form.get("unique_key", "")
    unique_asked = form.get("unique") == "1" or bool(key)
    call = producer.TaskCall.build(
        task.name,
        params,
        unique=unique_asked and not key,
        unique_key=key if unique_asked and key else None,
        priority=form.get("priority", "").strip() or None,
    )
    count_text = form.get("count", "1").strip() or "1"
    if not count_text.isdigit() or not 1 <= int(count_text) <= MAX_COUNT:
        raise BadInput(f"count: {count_text!r} is out of bounds, expected 1 <= count <= {MAX_COUNT:,}")
    queue = form.get("queue", "").strip() or DEFAULT_QUEUE
    check_queue_name(queue)
    return call, int(count_text), queue


def _read_when(form: Any) -> datetime | None:
    """The form's When (issue 15): empty or "now", a delay (10m) or a time (local to the dashboard)."""
    return timing.parse_when(form.get("when", ""))


def _form_context(form: Any) -> dict[str, Any]:
    """The catalogue as form fields (typed, bounded, defaulted) and the values to show in them."""
    selected = form.get("task") or request.args.get("task") or next(iter(task_def.CATALOGUE))
    tasks = []
    for task in task_def.CATALOGUE.values():
        fields = []
        for p in task.params:
            key = f"{task.name}.{p.name}"
            fields.append(
                {
                    "key": key,
                    "name": p.name,
                    "help": p.help,
                    "bounds": p.describe_bounds(),
                    "type": "number" if p.type in (int, float) else "text",
                    "step": "1" if p.type is int else "any",
                    "min": p.min,
                    "max": p.max,
                    "required": p.default is None,
                    "value": form.get(key, "" if p.default is None else p.default),
                }
            )
        tasks.append({"name": task.name, "description": task.description, "fields": fields})
    return {
        "tasks": tasks,
        "selected": selected,
        "count": form.get("count", 1),
        "queue": form.get("queue", DEFAULT_QUEUE),
        "when": form.get("when", "now"),
        "max_count": MAX_COUNT,
        "unique": form.get("unique") == "1",
        "unique_key": form.get("unique_key", ""),
        "unique_key_max": unique.MAX_KEY_LENGTH,
        "active_tab": "enqueue",
        "priorities": [(level, priorities.name(level)) for level in priorities.levels()],
        "priority": str(form.get("priority", priorities.NORMAL)),
    }


# Periodic schedules ------------------------------------------------------------------------------


@blueprint.get("/schedules")
def schedules_page() -> str:
    """Every schedule: timing, task, queue, next and last run, the last batch's outcome, and the
    pause, resume and run-now buttons (POSTs with the page's CSRF token)."""
    connection = _redis()
    now = schedules.redis_now(connection)
    found = [schedules.as_dict(connection, s, now) for s in schedules.load_all(connection, skip_bad=True)]
    return render_template("workqueue/schedules.html", schedules=found, active_tab="schedules")


@blueprint.post("/schedules/<name>/pause")
def pause_schedule(name: str) -> BaseResponse:
    schedules.set_paused(_redis(), name, True)
    return _done([f"schedule {name} paused: no consumer fires it until it is resumed"])


@blueprint.post("/schedules/<name>/resume")
def resume_schedule(name: str) -> BaseResponse:
    schedules.set_paused(_redis(), name, False)
    return _done([f"schedule {name} resumed: it fires from its next tick"])


@blueprint.post("/schedules/<name>/run-now")
def run_schedule_now(name: str) -> BaseResponse:
    batch_id = schedules.run_now(_redis(), name)
    return _done([f"schedule {name}: enqueued batch {batch_id} now"])
