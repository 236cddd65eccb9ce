"""The dashboard: rq-dashboard's blueprint mounted in our own Flask app, reading jobs as JSON."""

from __future__ import annotations

import redis
import rq_dashboard
from flask import Flask, Response, redirect, url_for
from rq_dashboard import web as rq_dashboard_web

from workqueue import metrics
from workqueue.policy import SERIALIZER


def create_app(redis_url: str) -> Flask:
    """A Flask app serving rq-dashboard at ``/rq`` (and ``/`` redirecting there) for ``redis_url``."""
    app = Flask(__name__)
    app.config["RQ_DASHBOARD_REDIS_URL"] = redis_url
    app.config["RQ_DASHBOARD_POLL_INTERVAL"] = 2000
    # rq-dashboard unpickles by default; ours is JSON everywhere.
    rq_dashboard_web.config.serializer = SERIALIZER
    app.register_blueprint(rq_dashboard.blueprint, url_prefix="/rq")
    rq_dashboard_web.setup_rq_connection(app)

    @app.get("/")
    def index():
        return redirect(url_for("rq_dashboard.queues_overview"))

    metrics_connection = redis.Redis.from_url(redis_url, socket_connect_timeout=5)

    @app.get("/metrics")
    def prometheus_metrics():
        return Response(metrics.render(metrics_connection), mimetype=metrics.CONTENT_TYPE)

    return app
