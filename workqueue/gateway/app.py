"""The gateway's JSON API over Redis: enqueue (one task or a batch), read and cancel jobs and
batches, list queues with their statistics and the catalogue. The routes are a Blueprint
(``routes``); ``create_app`` puts what they share into the app. The document it serves at
``/openapi.json`` (``openapi``) is what its clients and the schema-fuzzing test rely on."""

from __future__ import annotations

import json
from typing import Any

import redis
from flask import Flask
from flask.json.provider import DefaultJSONProvider
from werkzeug.sansio.response import Response

from workqueue import network, outage, webguard
from workqueue.gateway import openapi, routes, schedules_api
from workqueue.settings import GATEWAY_MAX_BODY
from workqueue.supervision import Supervisor

__all__ = ["create_app"]


def create_app(
    connection: redis.Redis,
    *,
    token: str | None = None,
    helpers: Supervisor | None = None,
    policy: network.NetworkPolicy | None = None,
    guard: webguard.Guard | None = None,
) -> Flask:
    """The API over ``connection``. With ``token``, every request needs ``Authorization: Bearer``;
    ``GET /health`` shows ``helpers`` (the threads delivering callbacks); callback URLs must pass
    ``policy`` (default: the environment's ``WORKQUEUE_ALLOW_NETWORKS``); ``guard`` (default: a
    loopback bind's) checks Host, Origin, JSON bodies and failed tokens."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = GATEWAY_MAX_BODY
    app.json = _InOrder(app)
    guard = guard or webguard.Guard()
    app.extensions[routes.EXTENSION] = routes.Gateway(
        connection=connection,
        token=token,
        helpers=helpers,
        policy=policy or network.NetworkPolicy.from_env(),
        guard=guard,
        mark=outage.DataMark(connection),
        document=openapi.document(),
    )
    app.register_blueprint(routes.bp)
    app.register_blueprint(schedules_api.bp)
    webguard.install(app, guard, routes.error, json_only=True)
    return app


class _InOrder(DefaultJSONProvider):
    """Flask's JSON, with keys in the order the code builds them (the OpenAPI document reads better).
    Answers are encoded by one encoder made once: Flask's ``json.dumps`` with its own arguments
    builds a new encoder for every answer."""

    sort_keys = False

    def __init__(self, app: Flask) -> None:
        super().__init__(app)
        self._compact = json.JSONEncoder(
            default=self.default, ensure_ascii=self.ensure_ascii, sort_keys=self.sort_keys, separators=(",", ":")
        )

    def response(self, *args: Any, **kwargs: Any) -> Response:
        if self.compact is False or (self.compact is None and self._app.debug):
            return super().response(*args, **kwargs)  # indented, as Flask does
        data = self._prepare_response_obj(args, kwargs)
        return self._app.response_class(f"{self._compact.encode(data)}\n", mimetype=self.mimetype)
