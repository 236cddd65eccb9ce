"""Producing through the HTTP gateway, from a machine with no access to Redis: batches sent from
several threads, and the results received by callback on a port this side opens, each one's
signature checked and each task counted once."""

from __future__ import annotations

import http.server
import json
import logging
import queue
import secrets
import socket
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from workqueue import priorities, producer
from workqueue.bind_address import url_host
from workqueue.errors import BadInput, WorkqueueError
from workqueue.gateway import delivery
from workqueue.settings import MAX_CALLBACK_BODY, MAX_TASKS

log = logging.getLogger(__name__)


class GatewayError(WorkqueueError):
    """The gateway could not be reached, refused the token, or failed."""


@dataclass
class Sent:
    batch_id: str
    queue: str
    job_ids: list[str]


class GatewayClient:
    """The gateway's API, as the producer uses it (thread-safe: one client for every thread)."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 60.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BadInput(f"--via {base_url!r}: expected the gateway's URL, e.g. http://127.0.0.1:8000")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise GatewayError(f"cannot reach the gateway at {self.base_url}: {exc}") from None
        if response.status_code in (400, 413, 422):
            raise BadInput(response.json().get("error", response.text))
        if response.status_code == 401:
            raise GatewayError(f"the gateway at {self.base_url} refused the token (set WORKQUEUE_GATEWAY_TOKEN)")
        if not response.is_success:
            raise GatewayError(f"the gateway answered {response.status_code}: {response.text[:200]}")
        return response.json()

    def enqueue(
        self,
        calls: list[producer.TaskCall],
        queue_name: str,
        *,
        callback_url: str | None = None,
        callback_secret: str | None = None,
        fields: Mapping[str, Any] | None = None,
    ) -> Sent:
        """One batch of up to MAX_TASKS calls (sharing their retries and timeout overrides and priority);
        ``fields``: more of the body's fields (when the batch runs: ``at``, ``after``, ``after_any``)."""
        body: dict[str, Any] = {
            "tasks": [{"task": c.task.name, "params": c.params} for c in calls],
            "queue": queue_name,
        }
        for name in ("retries", "timeout", "limit_key"):
            if getattr(calls[0], name) is not None:
                body[name] = getattr(calls[0], name)
        if calls[0].priority != priorities.NORMAL:  # shared too (--priority)
            body["priority"] = calls[0].priority
        if callback_url:
            body["callback"] = {"url": callback_url, "secret": callback_secret}
        if calls[0].unique_key is not None:  # one key for all, or each its task and parameters ({})
            keys = {c.unique_key for c in calls}
            body["unique"] = {"key": calls[0].unique_key} if len(keys) == 1 else {}
            if calls[0].unique_for is not None:
                body["unique"]["for"] = calls[0].unique_for
        body.update(fields or {})
        reply = self.request("POST", "/batches", json=body)
        return Sent(reply["batch_id"], reply["queue"], reply["job_ids"])

    def batch(self, batch_id: str) -> dict[str, Any]:
        return self.request("GET", f"/batches/{batch_id}")


def send(
    client: GatewayClient,
    calls: list[producer.TaskCall],
    queue_name: str,
    threads: int,
    *,
    callback_url: str | None = None,
    callback_secret: str | None = None,
    fields: Mapping[str, Any] | None = None,
) -> list[Sent]:
    """Every call, as batches of at most MAX_TASKS, sent from ``threads`` threads at once."""
    per_thread = -(-len(calls) // threads)
    chunks = [calls[i : i + min(per_thread, MAX_TASKS)] for i in range(0, len(calls), min(per_thread, MAX_TASKS))]
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="producer") as pool:
        futures = [
            pool.submit(
                client.enqueue,
                chunk,
                queue_name,
                callback_url=callback_url,
                callback_secret=callback_secret,
                fields=fields,
            )
            for chunk in chunks
        ]
        return [f.result() for f in futures]


@dataclass
class Delivery:
    """One callback the gateway made: a task's end or a batch's end."""

    payload: dict[str, Any]
    #: The same delivery seen before: marked a redelivery by the gateway, or (a fault) not.
    repeat: bool = False


@dataclass
class Tally:
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    redeliveries: int = 0
    unmarked_duplicates: int = 0
    refused: int = 0


class ResultReceiver:
    """An HTTP server on this machine that the gateway POSTs results to. Only deliveries signed
    with this run's secret are taken; each arrives on :meth:`deliveries` in order."""

    def __init__(self, host: str, port: int = 0, *, secret: str | None = None, path: str | None = None) -> None:
        """Listen on ``host:port`` (any free port by default) at a new secret path with a new secret,
        or at those given (to take over from an earlier receiver)."""
        self.secret = secret or secrets.token_urlsafe(32)
        self.tally = Tally()
        self._seen: set[str] = set()
        self._events: queue.Queue[Delivery] = queue.Queue()
        self._lock = threading.Lock()
        self.server = http.server.ThreadingHTTPServer((host, port), self._handler())
        self.server.daemon_threads = True
        self.path = path or f"/results/{secrets.token_urlsafe(8)}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="results", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{url_host(str(host))}:{port}{self.path}"

    def __enter__(self) -> ResultReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def deliveries(self, timeout: float) -> Iterator[Delivery | None]:
        """Each delivery as it arrives; None after ``timeout`` seconds without one."""
        while True:
            try:
                yield self._events.get(timeout=timeout)
            except queue.Empty:
                yield None

    def take(self, body: bytes, timestamp: str, signature: str) -> int:
        """Check and record one delivery: the HTTP status to answer."""
        if not delivery.verify(self.secret, timestamp, body, signature):
            self.tally.refused += 1
            return 401
        try:
            payload = json.loads(body)
            delivery_id = payload["delivery_id"]
        except (ValueError, KeyError, TypeError):
            return 400
        with self._lock:
            repeat = delivery_id in self._seen
            self._seen.add(delivery_id)
            if payload.get("redelivery"):
                self.tally.redeliveries += 1
            elif repeat:
                self.tally.unmarked_duplicates += 1
            if payload.get("type") == "batch":
                self.tally.batches[payload["batch_id"]] = payload
            elif not repeat and not payload.get("ran_again"):
                self.tally.tasks[payload["job_id"]] = payload
        self._events.put(Delivery(payload, repeat))
        return 204

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's name
                given = self.headers.get("Content-Length") or "0"
                length = int(given) if given.isascii() and given.isdigit() else 0
                if self.path != receiver.path or not 0 < length <= MAX_CALLBACK_BODY:
                    self.send_response(404 if self.path != receiver.path else 413)
                    self.end_headers()
                    return
                body = self.rfile.read(length)
                status = receiver.take(
                    body,
                    self.headers.get(delivery.TIMESTAMP_HEADER, ""),
                    self.headers.get(delivery.SIGNATURE_HEADER, ""),
                )
                self.send_response(status)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # http.server's name
                log.debug("callback: " + format, *args)

        return Handler


def address_towards(url: str) -> str:
    """The address of this machine that the gateway at ``url`` can reach it on: the one its
    traffic to the gateway leaves from (loopback for a gateway on loopback)."""
    parts = urlsplit(url)
    with socket.socket(socket.AF_INET6 if ":" in (parts.hostname or "") else socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((parts.hostname or "127.0.0.1", parts.port or 80))
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"
