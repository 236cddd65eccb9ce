"""The dashboard: rq-dashboard's blueprint mounted in our own Flask app, reading jobs as JSON."""

from __future__ import annotations

import rq_dashboard
from flask import Flask, redirect, url_for
from rq_dashboard import web as rq_dashboard_web

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

    return app
