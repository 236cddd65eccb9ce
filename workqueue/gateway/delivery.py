"""Results back to whoever asked, by HTTP callback: each task's end, then the batch's end, POSTed
to the batch's callback URL, signed with an HMAC of the body, in order, retried with backoff while
the receiver is down, and never failing a job.

The source is the batch's event stream (``workqueue.batches``), which the workers' callbacks
already write once per task. RQ's webhooks do not fit: they are sent by the worker itself, inside
the job's end, once, unsigned, without the result, and with no batch end.

Redis keys (expiring with the results):
- ``workqueue:gateway:callbacks``: the batches with a callback still to deliver;
- ``workqueue:gateway:callback:<batch>``: url, secret, the last delivered stream entry (``cursor``),
  the entry being sent (``inflight``: if a gateway dies or a send fails after the receiver may have
  got it, the next send of that entry is marked a redelivery), failures and the time of the next try;
- ``workqueue:gateway:lock:<batch>``: held while one gateway delivers, so several can run.

A failure in one batch's delivery never ends the loop: a receiver that is down or answers an error
is retried for as long as the results are kept; anything else (a URL the sender cannot use, a
refused address, a record it cannot read) is logged and retried ``DELIVERY_MAX_ERRORS`` times, then that
batch's callbacks are given up. Every connection goes through the network policy
(``workqueue.network``), which the gateway also applies to callback URLs when they are given.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import threading
import time
import uuid
from typing import Any

import httpx
import redis

from workqueue import batches, network
from workqueue.errors import BadInput
from workqueue.replies import decoded, decoded_map
from workqueue.settings import DELIVERY_GRACE, DELIVERY_LOCK_MS, DELIVERY_MAX_ERRORS, DELIVERY_ROUND, RESULT_TTL
from workqueue.supervision import Supervisor

log = logging.getLogger(__name__)

PENDING = "workqueue:gateway:callbacks"
#: What makes a callback URL unusable (refused at request time; seen here only in older records).
_UNUSABLE = (httpx.InvalidURL, httpx.UnsupportedProtocol, network.AddressRefused)

SIGNATURE_HEADER = "X-Workqueue-Signature"
TIMESTAMP_HEADER = "X-Workqueue-Timestamp"
DELIVERY_HEADER = "X-Workqueue-Delivery"


def callback_key(batch_id: str) -> str:
    return f"workqueue:gateway:callback:{batch_id}"


def lock_key(batch_id: str) -> str:
    return f"workqueue:gateway:lock:{batch_id}"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header's value: HMAC-SHA256 over the timestamp, a dot and the body."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(secret: str, timestamp: str, body: bytes, signature: str, tolerance: float = 300.0) -> bool:
    """Whether a delivery came from a gateway holding ``secret`` within ``tolerance`` seconds
    (headers of any characters are simply not a signature: compared as bytes, never raising)."""
    if not (timestamp.isascii() and signature.isascii()):
        return False
    try:
        fresh = abs(time.time() - float(timestamp)) <= tolerance
    except ValueError:
        return False
    return fresh and hmac.compare_digest(sign(secret, timestamp, body).encode(), signature.encode())


def check_url(url: str, policy: network.NetworkPolicy) -> str:
    """``url`` if the sender can POST to it: parsed by httpx (the sender's own parser), http or
    https with a host, not refused by ``policy``; raises BadInput naming ``callback.url``."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise BadInput(f"callback.url: not a URL the gateway can send to ({exc})", "callback.url") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise BadInput("callback.url: must be an http:// or https:// URL with a host", "callback.url")
    try:
        policy.check_url(url)
    except network.AddressRefused as exc:
        raise BadInput(f"callback.url: {exc}", "callback.url") from None
    return url


def register(connection: redis.Redis, batch_id: str, url: str, secret: str) -> None:
    """Ask for ``batch_id``'s results at ``url`` (before the batch is enqueued: nothing is missed)."""
    with connection.pipeline() as pipe:
        pipe.hset(
            callback_key(batch_id),
            mapping={"url": url, "secret": secret, "cursor": "0-0", "registered_at": time.time()},
        )
        pipe.expire(callback_key(batch_id), RESULT_TTL)
        pipe.sadd(PENDING, batch_id)
        pipe.execute()


def _payload(batch_id: str, entry_id: str, fields: dict[str, str], summary: batches.BatchSummary | None) -> dict:
    if summary is not None:
        return {
            "type": "batch",
            "batch_id": batch_id,
            "total": summary.total,
            "finished": summary.finished,
            "failed": summary.failed,
            "elapsed": summary.elapsed,
        }
    try:
        detail = json.loads(fields["detail"])
    except ValueError:  # cut at the stream's 2,000 characters: sent as the text it is
        detail = fields["detail"]
    outcome = fields["outcome"]
    return {
        "type": "task",
        "batch_id": batch_id,
        "job_id": fields["job"],
        "task": fields["task"],
        "outcome": outcome,
        "result": detail if outcome == "finished" else None,
        "error": None if outcome == "finished" else detail,
        "duration": float(fields["duration"]),
        "ran_again": fields.get("redelivery") == "1",
    }


class Deliverer:
    """Delivers every registered batch's results; run one in each gateway (see :meth:`run`)."""

    def __init__(
        self,
        connection: redis.Redis,
        *,
        timeout: float = 5.0,
        max_backoff: float = 60.0,
        policy: network.NetworkPolicy | None = None,
    ) -> None:
        self.connection = connection
        self.max_backoff = max_backoff
        self.http = network.client(policy, timeout=timeout, follow_redirects=False)
        self.owner = uuid.uuid4().hex

    def run(self, stop: threading.Event, idle: float = 0.2) -> None:
        """Deliver until ``stop`` is set, resting ``idle`` seconds when there was nothing to send."""
        while not stop.is_set():
            try:
                sent = self.step()
            except redis.RedisError as exc:
                log.warning("callback delivery paused: %s", exc)
                sent = 0
            if not sent:
                stop.wait(idle)

    def step(self) -> int:
        """One round over the registered batches: how many deliveries succeeded."""
        sent = 0
        for raw in self.connection.smembers(PENDING):
            batch_id = decoded(raw, errors="replace")
            if not self.connection.set(lock_key(batch_id), self.owner, nx=True, px=DELIVERY_LOCK_MS):
                continue  # another gateway is on it
            try:
                sent += self._deliver(batch_id)
            except redis.RedisError:
                raise  # an outage: the whole loop pauses
            except Exception as exc:  # one batch's fault never stops the others'
                self._error(batch_id, exc)
            finally:
                if self.connection.get(lock_key(batch_id)) == self.owner.encode():
                    self.connection.delete(lock_key(batch_id))
        return sent

    def _deliver(self, batch_id: str) -> int:
        state = decoded_map(self.connection.hgetall(callback_key(batch_id)))
        if not state:
            self.connection.srem(PENDING, batch_id)  # expired
            return 0
        if float(state.get("next_try", 0)) > time.time():
            return 0
        entries = self.connection.xrange(batches.events_key(batch_id), f"({state['cursor']}", "+", count=DELIVERY_ROUND)
        if not entries:
            self._drop_if_never_enqueued(batch_id, state)
            return 0
        sent = 0
        for raw_id, raw_fields in entries:
            if raw_id is None or raw_fields is None:
                continue  # never from XRANGE: redis-py's type also covers XCLAIM's deleted entries
            entry_id = decoded(raw_id)
            fields = decoded_map(raw_fields)
            done = fields.get("batch") == "done"
            payload = _payload(batch_id, entry_id, fields, batches.summary(self.connection, batch_id) if done else None)
            if not self._send(batch_id, entry_id, payload, state):
                break
            sent += 1
            state["cursor"] = entry_id
            if done:
                with self.connection.pipeline() as pipe:
                    pipe.srem(PENDING, batch_id)
                    pipe.delete(callback_key(batch_id))
                    pipe.execute()
                break
        return sent

    def _send(self, batch_id: str, entry_id: str, payload: dict[str, Any], state: dict[str, str]) -> bool:
        """POST one entry; True once the receiver has it (2xx). On failure, schedule the next try."""
        key = callback_key(batch_id)
        payload["delivery_id"] = f"{batch_id}:{entry_id}"
        payload["redelivery"] = state.get("inflight") == entry_id or payload.get("ran_again", False)
        self.connection.hset(key, "inflight", entry_id)
        state["inflight"] = entry_id
        body = json.dumps(payload).encode()
        timestamp = f"{time.time():.3f}"
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(state["secret"], timestamp, body),
            DELIVERY_HEADER: payload["delivery_id"],
        }
        try:
            response = self.http.post(state["url"], content=body, headers=headers)
            ok, reason = response.is_success, f"HTTP {response.status_code}"
        except _UNUSABLE:
            self.connection.hdel(key, "inflight")  # never sent
            raise
        except httpx.ConnectError as exc:  # never reached the receiver: the next send is not a redelivery
            ok, reason = False, f"cannot connect ({exc})"
            self.connection.hdel(key, "inflight")
            state.pop("inflight", None)
        except httpx.HTTPError as exc:
            ok, reason = False, f"{type(exc).__name__}: {exc}"
        if ok:
            with self.connection.pipeline() as pipe:
                pipe.hset(key, "cursor", entry_id)
                pipe.hdel(key, "inflight", "failures", "next_try", "errors")
                pipe.execute()
            state.pop("inflight", None)
            state.pop("failures", None)
            return True
        failures = int(state.get("failures", 0)) + 1
        wait = self._backoff(failures)
        self.connection.hset(key, mapping={"failures": failures, "next_try": time.time() + wait})
        log.warning(
            "callback for batch %s to %s failed (%s, attempt %d); next try in %.1f s",
            batch_id,
            state["url"],
            reason,
            failures,
            wait,
        )
        return False

    def _backoff(self, attempt: int) -> float:
        return min(self.max_backoff, 0.5 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)

    def _error(self, batch_id: str, exc: Exception) -> None:
        """A delivery that failed other than by the receiver: tried DELIVERY_MAX_ERRORS times, then given up."""
        key = callback_key(batch_id)
        errors = self.connection.hincrby(key, "errors", 1)
        trace = None if isinstance(exc, _UNUSABLE) else exc  # a traceback for what was not foreseen
        if errors >= DELIVERY_MAX_ERRORS:
            log.error(
                "giving up the callbacks of batch %s after %d errors, the last: %s: %s",
                batch_id,
                errors,
                type(exc).__name__,
                exc,
                exc_info=trace,
            )
            with self.connection.pipeline() as pipe:
                pipe.srem(PENDING, batch_id)
                pipe.delete(key)
                pipe.execute()
            return
        wait = self._backoff(errors)
        self.connection.hset(key, "next_try", time.time() + wait)
        if self.connection.ttl(key) < 0:  # a record that was not ours: expire it like ours
            self.connection.expire(key, RESULT_TTL)
        log.error(
            "callbacks of batch %s failed (%s: %s; error %d of %d); next try in %.1f s",
            batch_id,
            type(exc).__name__,
            exc,
            errors,
            DELIVERY_MAX_ERRORS,
            wait,
            exc_info=trace,
        )

    def _drop_if_never_enqueued(self, batch_id: str, state: dict[str, str]) -> None:
        """A batch registered but never enqueued (its enqueue failed) is forgotten after DELIVERY_GRACE."""
        waited = time.time() - float(state.get("registered_at", 0))
        if waited > DELIVERY_GRACE and not self.connection.exists(batches.key(batch_id)):
            with self.connection.pipeline() as pipe:
                pipe.srem(PENDING, batch_id)
                pipe.delete(callback_key(batch_id))
                pipe.execute()


def supervised(connection: redis.Redis, policy: network.NetworkPolicy | None = None) -> Supervisor:
    """The gateway's helper threads (callback delivery), restarted if one dies: start them with
    ``.start(stop)``; ``.status()`` is what ``GET /health`` shows."""
    helpers = Supervisor()
    helpers.add("callbacks", Deliverer(connection, policy=policy).run)
    return helpers
