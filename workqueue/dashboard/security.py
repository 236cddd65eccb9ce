"""What makes the dashboard safe to expose: loopback unless credentials are set, HTTP Basic auth
(slowed down after failures), a CSRF token on every state-changing request (rq-dashboard's own
included), a read-only mode, a Content-Security-Policy that runs our static scripts only, and
``webguard``'s Host and Origin checks.

rq-dashboard ships with none of these; they are applied here to the whole app, so its routes and
ours are covered alike.
"""

from __future__ import annotations

import hmac
import os
import secrets
from dataclasses import dataclass

from flask import Flask, Response, g, jsonify, render_template, request
from flask_wtf.csrf import CSRFError, CSRFProtect

from workqueue import bind_address, webguard
from workqueue.errors import BadInput
from workqueue.settings import DASHBOARD_MAX_BODY, PASSWORD_ENV, SECRET_ENV, SECRET_MIN, USERNAME_ENV

#: What changes nothing, so needs neither a CSRF token nor write access.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

#: Scripts from our own origin only (static files: no inline script, no eval), nothing framing us.
#: Styles may be inline: rq-dashboard's markup has style attributes, and a style runs no code.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    @classmethod
    def resolve(cls, username: str | None, password: str | None) -> Credentials | None:
        """Both or neither; BadInput for one without the other or an empty one."""
        if username is None and password is None:
            return None
        if not username or not password:
            raise BadInput(
                f"give both a username and a password (--username/--password or {USERNAME_ENV}/{PASSWORD_ENV})"
            )
        return cls(username, password)

    def match(self, username: str, password: str) -> bool:
        same_user = hmac.compare_digest(username.encode(), self.username.encode())
        same_password = hmac.compare_digest(password.encode(), self.password.encode())
        return same_user and same_password


def check_bind(host: str, credentials: Credentials | None) -> None:
    """Refuse to listen beyond loopback without credentials, or with a password the gateway would
    refuse as a token (shorter than SECRET_MIN)."""
    bind_address.check_bind(
        host,
        credentials is not None,
        "stop workers and enqueue tasks",
        f"set {USERNAME_ENV} and {PASSWORD_ENV} (or --username/--password)",
    )
    if credentials is not None and len(credentials.password) < SECRET_MIN and not bind_address.is_loopback(host):
        raise BadInput(
            f"the password is {len(credentials.password)} characters: use at least {SECRET_MIN} "
            f"to listen on {host} ({PASSWORD_ENV})"
        )


def install(app: Flask, credentials: Credentials | None, read_only: bool, guard: webguard.Guard) -> None:
    """Host and Origin checks, auth, read-only refusal and CSRF for every route of ``app``, in that
    order, and the security headers on every response."""
    app.config.update(
        SECRET_KEY=os.environ.get(SECRET_ENV) or secrets.token_hex(32),
        MAX_CONTENT_LENGTH=DASHBOARD_MAX_BODY,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=guard.secure_cookies,
        WTF_CSRF_TIME_LIMIT=None,  # valid for the session: a page left open stays usable
    )
    webguard.install(app, guard, refusal)

    @app.before_request
    def authenticate() -> Response | None:
        g.user = None
        if credentials is None:
            return None
        throttled = guard.throttled(refusal)
        if throttled is not None:
            return throttled
        auth = request.authorization
        if auth is None or auth.type != "basic" or not credentials.match(auth.username or "", auth.password or ""):
            if auth is not None:  # a browser's first request carries none: not a failure
                guard.failed()
            challenge = {"WWW-Authenticate": 'Basic realm="workqueue", charset="UTF-8"'}
            return Response("credentials required\n", 401, challenge, mimetype="text/plain")
        guard.succeeded()
        g.user = credentials.username
        return None

    @app.before_request
    def refuse_writes_when_read_only() -> Response | None:
        if read_only and request.method not in SAFE_METHODS:
            return refusal(403, "the dashboard is read-only (started with --read-only)")
        return None

    CSRFProtect(app)  # its check runs after the two above

    @app.errorhandler(CSRFError)
    def csrf_refused(error: CSRFError) -> Response:
        return refusal(400, f"refused: {error.description} Reload the page and try again.")

    @app.after_request
    def harden(response: Response) -> Response:
        # The CSRF token is in each page (#wq-config's data-csrf), never in a cookie a script reads.
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        return response


def actor() -> str:
    """Who did it, for the job's and worker's records: the user, or the address it came from."""
    return f"dashboard ({g.get('user') or request.remote_addr})"


def wants_html() -> bool:
    """A browser navigating (or posting a form), as opposed to a script or an XHR."""
    return request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html"


def refusal(status: int, message: str) -> Response:
    """A refusal as JSON for scripts and XHR, as a page for a browser's form post."""
    if wants_html():
        response = Response(render_template("workqueue/message.html", title="Refused", message=message), status)
    else:
        response = jsonify(error=message)
        response.status_code = status
    return response
