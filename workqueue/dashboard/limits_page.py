"""The dashboard's Limits page (``workqueue.limits``): each rule, and each key in use with its rate,
slots in use and jobs waiting; a form to set a rule and a button to remove one (POSTs, CSRF-checked
and refused when read-only by ``security`` like every other action)."""

from __future__ import annotations

import time
from typing import Any

import redis
from flask import Blueprint, Response, current_app, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from workqueue import limits
from workqueue.errors import BadInput

blueprint = Blueprint("limits", __name__)


def _redis() -> redis.Redis:
    connection: redis.Redis = current_app.extensions["workqueue.redis"]
    return connection


def _page(error: str | None = None, form: Any = None, status: int = 200) -> Response:
    connection = _redis()
    html = render_template(
        "workqueue/limits.html",
        rules=limits.rules(connection),
        keys=limits.key_states(connection, time.time()),
        is_pattern=limits.is_pattern,
        error=error,
        form=form or {},
        active_tab="limits",
    )
    return Response(html, status)


@blueprint.get("/limits")
def limits_page() -> Response:
    return _page()


@blueprint.post("/limits")
def set_limit() -> BaseResponse:
    """The form's key or pattern, rate and concurrency, validated as ``limit set`` validates them."""
    form = request.form
    rate = form.get("rate", "").strip() or None
    text = form.get("concurrency", "").strip()
    try:
        if text and not text.lstrip("-").isdigit():
            raise BadInput(f"concurrency {text!r}: expected a whole number >= 1", "concurrency")
        rule = limits.make_rule(form.get("key", "").strip(), rate, int(text) if text else None)
    except BadInput as exc:
        return _page(str(exc), form, 422)
    limits.set_rule(_redis(), rule)
    flash(f"limit on {rule.pattern}: {rule.describe()}", "success")
    return redirect(url_for(".limits_page"), 303)


@blueprint.post("/limits/remove")
def remove_limit() -> BaseResponse:
    try:
        rule = limits.remove_rule(_redis(), request.form.get("key", ""))
    except BadInput as exc:
        flash(str(exc), "danger")
        return redirect(url_for(".limits_page"), 303)
    flash(f"removed the limit on {rule.pattern} ({rule.describe()})", "success")
    return redirect(url_for(".limits_page"), 303)
