"""The dashboard app: rq-dashboard's blueprint at ``/rq`` with its unsafe views replaced, our
pages at ``/``, ``/metrics``, and the safety of ``security`` over all of it."""

from __future__ import annotations

from typing import Any

import redis
import rq
import rq_dashboard
from flask import Flask, Response, jsonify, send_from_directory, url_for
from rq_dashboard import web as rq_dashboard_web
from rq_dashboard.version import VERSION as RQ_DASHBOARD_VERSION
from werkzeug.exceptions import HTTPException

from workqueue import outage, priorities, webguard
from workqueue.connection import client_from_url
from workqueue.dashboard import limits_page, metrics, rq_views, security, views
from workqueue.errors import RedisLostData, UnreadableJob
from workqueue.jobs import SERIALIZER
from workqueue.settings import POLL_INTERVAL
from workqueue.supervision import Supervisor


def create_app(
    redis_url: str,
    *,
    credentials: security.Credentials | None = None,
    read_only: bool = False,
    guard: webguard.Guard | None = None,
    helpers: Supervisor | None = None,
) -> Flask:
    """The whole dashboard for ``redis_url``. Templates of ours named like rq-dashboard's
    (``rq_dashboard/base.html``, ``navbar.html``, ``queues.html``, ``jobs.html``) take precedence
    over its own. ``guard`` defaults to a loopback bind's (see ``webguard``); ``helpers`` (its
    sweeper thread) are shown by ``/health`` and ``/metrics``."""
    priorities.install()  # rq-dashboard's queue counts and lists see every priority level
    app = Flask(__name__)
    _install_rq_dashboard(app, redis_url, credentials, read_only, guard or webguard.Guard())
    _install_page_context(app, credentials, read_only)
    _install_error_handlers(app)
    _install_health_and_metrics(app, helpers)
    return app


def _install_rq_dashboard(
    app: Flask,
    redis_url: str,
    credentials: security.Credentials | None,
    read_only: bool,
    guard: webguard.Guard,
) -> None:
    """rq-dashboard's blueprint at ``/rq`` (JSON, its unsafe views replaced) under ``security``, our
    pages at ``/``, and the Redis connection they share."""
    app.config.update(
        RQ_DASHBOARD_REDIS_URL=redis_url,
        RQ_DASHBOARD_POLL_INTERVAL=POLL_INTERVAL,
        RQ_DASHBOARD_DISABLE_DELETE=read_only,
    )
    # rq-dashboard unpickles by default; ours is JSON everywhere.
    rq_dashboard_web.config.serializer = SERIALIZER
    security.install(app, credentials, read_only, guard)
    app.register_blueprint(rq_dashboard.blueprint, url_prefix="/rq")
    rq_dashboard_web.setup_rq_connection(app)
    rq_views.replace_unsafe_views(app)
    app.register_blueprint(views.blueprint)
    app.register_blueprint(limits_page.blueprint)  # per-key limits (workqueue.limits)
    # One client for our pages and rq-dashboard's, built as every command builds it (a Sentinel URL
    # gives a client that follows the master after a failover).
    app.extensions["workqueue.redis"] = client_from_url(redis_url, socket_connect_timeout=5)
    app.redis_conn = app.extensions["workqueue.redis"]  # type: ignore[attr-defined]


def _install_page_context(app: Flask, credentials: security.Credentials | None, read_only: bool) -> None:
    """The context and the favicon that rq-dashboard's templates ask the app for."""

    @app.context_processor
    def page_context() -> dict[str, Any]:
        """What rq-dashboard's base template and navbar need, on our pages as on its own."""
        return {
            "rq_url_prefix": url_for("rq_dashboard.queues_overview"),
            "current_instance": 0,
            "poll_interval": POLL_INTERVAL,
            "rq_dashboard_version": RQ_DASHBOARD_VERSION,
            "rq_version": rq.__version__,
            "read_only": read_only,
            "user": credentials.username if credentials else None,
        }

    def static_files(filename: str) -> Response:
        """Ours, and rq-dashboard's favicon, which its base template asks the app for."""
        if filename == "favicon.ico":
            return send_from_directory(rq_dashboard.blueprint.static_folder, filename)
        return app.send_static_file(filename)

    app.view_functions["static"] = static_files


def _install_error_handlers(app: Flask) -> None:
    """Errors in the shape of our refusals; a Redis outage or lost data as a 503 that says so."""

    @app.errorhandler(UnreadableJob)
    def unreadable(error: UnreadableJob) -> Response:
        return security.refusal(422, str(error))

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        """404s and the like in the same shape as our refusals (JSON for scripts, a page otherwise)."""
        response = security.refusal(error.code or 500, error.description or error.name)
        if error.code == 405:
            response.headers["Allow"] = error.get_response().headers.get("Allow", "")
        return response

    # A Redis outage is a 503 that says what it is, not a 500; Redis back without its data is said
    # once (503), not shown as empty queues.
    mark = outage.DataMark(app.extensions["workqueue.redis"])

    @app.before_request
    def same_data() -> None:
        mark.check(app.extensions["workqueue.redis"], probe_writes=False)

    @app.errorhandler(redis.RedisError)
    @app.errorhandler(RedisLostData)
    def redis_outage(error: Exception) -> Response:
        what = str(error) if isinstance(error, RedisLostData) else outage.describe(error)
        return security.refusal(503, f"{what}; the dashboard shows it again once Redis answers")


def _install_health_and_metrics(app: Flask, helpers: Supervisor | None) -> None:
    """``/metrics`` for Prometheus and ``/health`` for probes, both showing ``helpers``' threads."""

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        threads = helpers.status() if helpers is not None else []
        return Response(metrics.render(app.extensions["workqueue.redis"], threads), mimetype=metrics.CONTENT_TYPE)

    @app.get("/health")
    def health() -> tuple[Response, int]:
        """Whether Redis answers and every helper thread runs (503 otherwise), for probes."""
        threads = helpers.status() if helpers is not None else []
        try:
            redis_up = bool(app.extensions["workqueue.redis"].ping())
        except redis.RedisError:
            redis_up = False
        ok = redis_up and all(t["up"] for t in threads)
        return jsonify({"ok": ok, "redis": redis_up, "helpers": threads}), 200 if ok else 503
