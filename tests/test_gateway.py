"""The HTTP gateway against a real Redis: the API and its validation, its safety defaults, signed
callbacks through receivers that are down or failing, and the round trip producer (threads) →
gateway → Redis → workers → gateway → producer, with real processes on loopback."""

from __future__ import annotations

import base64
import ctypes
import http.client
import json
import pickle
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import redis
from flask.testing import FlaskClient
from rq import Queue
from rq.job import Job

from tests.helpers import Processes, answers, cli_env, free_port, run_cli, start_consumer, wait_for
from workqueue import batches, producer
from workqueue.gateway import client as remote
from workqueue.gateway import create_app, delivery
from workqueue.jobs import SERIALIZER
from workqueue.settings import DELIVERY_MAX_ERRORS, GATEWAY_MAX_BODY

TOKEN = "t0ken-of-at-least-16-chars"


@pytest.fixture
def api(conn: redis.Redis) -> FlaskClient:
    app = create_app(conn)
    app.testing = True
    return app.test_client()


def status(conn: redis.Redis, job_id: str) -> str:
    return Job.fetch(job_id, connection=conn, serializer=SERIALIZER).get_status().value


# The API -----------------------------------------------------------------------------------------------


def test_catalogue_and_openapi_document(api: FlaskClient) -> None:
    tasks = {t["name"]: t for t in api.get("/tasks").json["tasks"]}
    assert list(tasks) == ["sleep", "scrape", "crawl", "primes", "pi", "fibonacci", "factorise"]
    (seconds,) = tasks["sleep"]["params"]
    assert seconds == {
        "name": "seconds",
        "type": "number",
        "help": "how long to sleep",
        "required": False,
        "default": 5.0,
        "minimum": 0,
        "maximum": 3600,
        "exclusive_minimum": True,
    }
    document = api.get("/openapi.json").json
    assert document["openapi"] == "3.0.3"
    assert {"/health", "/tasks", "/queues", "/jobs", "/batches", "/jobs/{job_id}", "/batches/{batch_id}"} <= set(
        document["paths"]
    )  # and the paths of each feature, checked by its own test file (tests/test_schedules.py, ...)


def test_enqueue_read_and_cancel_a_job_and_a_batch(conn: redis.Redis, api: FlaskClient) -> None:
    one = api.post("/jobs", json={"task": "sleep", "params": {"seconds": 2}, "count": 2, "queue": "queue_two"})
    assert one.status_code == 201 and one.json["queue"] == "queue_two" and len(one.json["job_ids"]) == 2
    assert Queue("queue_two", connection=conn).count == 2
    job = api.get(f"/jobs/{one.json['job_ids'][0]}").json
    assert (job["task"], job["status"], job["batch"], job["description"]) == (
        "sleep",
        "queued",
        one.json["batch_id"],
        "sleep(seconds=2.0)",
    )
    batch = api.get(f"/batches/{one.json['batch_id']}").json
    assert (batch["total"], batch["done"], [j["status"] for j in batch["jobs"]]) == (2, False, ["queued"] * 2)
    cancelled = api.delete(f"/jobs/{one.json['job_ids'][0]}").json["message"]
    assert cancelled.startswith(f"job {one.json['job_ids'][0]} cancelled (was queued")
    many = api.post("/batches", json={"tasks": [{"task": "primes", "params": {"n": 100}}, {"task": "pi"}]})
    assert many.status_code == 201 and len(many.json["job_ids"]) == 2
    messages = api.delete(f"/batches/{many.json['batch_id']}").json["messages"]
    assert len(messages) == 2 and all("cancelled" in m for m in messages)
    queues = {q["name"]: q for q in api.get("/queues").json["queues"]}
    assert queues["queue_two"]["queued"] == 1
    assert {t["task"]: t["enqueued"] for t in queues["queue_one"]["tasks"]} == {"pi": 1, "primes": 1}


@pytest.mark.parametrize(
    "path, body, field, message",
    [
        (
            "/jobs",
            {"task": "sleep", "params": {"seconds": 0}},
            "params.seconds",
            "seconds: 0 is out of bounds, expected 0 < seconds <= 3,600",
        ),
        ("/jobs", {"task": "nope"}, "task", "unknown task 'nope'; the catalogue has: sleep, scrape"),
        ("/jobs", {"task": "sleep", "params": {"minutes": 1}}, "params.minutes", "sleep: unknown parameter 'minutes'"),
        ("/jobs", {"task": "sleep", "count": 0}, "count", "count: expected an integer, 1 <= count <= 1,000, got 0"),
        ("/jobs", {"task": "sleep", "count": True}, "count", "count: expected an integer"),
        ("/jobs", {"task": "sleep", "queue": "bad name"}, "queue", "invalid queue name 'bad name'"),
        ("/jobs", {"task": "sleep", "retries": 99}, "retries", "retries: 99 is out of bounds"),
        ("/jobs", {"task": "sleep", "colour": "red"}, "colour", "colour: unknown field"),
        (
            "/jobs",
            {"task": "sleep", "callback": {"url": "ftp://x", "secret": "s" * 16}},
            "callback.url",
            "callback.url: must be an http:// or https:// URL with a host",
        ),
        ("/jobs", {"task": "sleep", "callback": {"url": "http://x/"}}, "callback", 'callback: expected {"url": URL'),
        (
            "/jobs",
            {"task": "sleep", "callback": {"url": "http://x/", "secret": "short"}},
            "callback.secret",
            "callback.secret: expected text of 16 to 256 characters",
        ),
        (
            "/jobs",
            {"task": "sleep", "callback": {"url": "http://[1.2.3.4]/", "secret": "s" * 16}},
            "callback.url",
            "callback.url: not a URL the gateway can send to (Invalid IPv6 address: '[1.2.3.4]')",
        ),
        (
            "/jobs",
            {"task": "sleep", "callback": {"url": "http://169.254.169.254/latest", "secret": "s" * 16}},
            "callback.url",
            "callback.url: refused: 169.254.169.254 is a cloud metadata address (never allowed)",
        ),
        (
            "/jobs",
            {"task": "sleep", "callback": {"url": "https://10.1.2.3:8443/hook", "secret": "s" * 16}},
            "callback.url",
            "callback.url: refused: 10.1.2.3 is a private address (allow it with WORKQUEUE_ALLOW_NETWORKS)",
        ),
        (
            "/batches",
            {"tasks": [{"task": "pi"}], "callback": {"url": "http://[fe80::1]/", "secret": "s" * 16}},
            "callback.url",
            "fe80::1 is a link-local address (never allowed)",
        ),
        ("/jobs", [1, 2], None, "expected a JSON object"),
        ("/jobs", {"task": "pi", "count": None}, "count", "count: null is not a value"),
        ("/jobs", {"task": "pi", "retries": None, "timeout": None}, "retries", "retries: null is not a value"),
        ("/batches", {"tasks": [{"task": "pi"}], "queue": None}, "queue", "queue: null is not a value"),
        ("/batches", {"tasks": []}, "tasks", "tasks: expected a list of 1 to 1000 tasks"),
        (
            "/batches",
            {"tasks": [{"task": "pi"}, {"task": "scrape", "params": {}}]},
            "tasks[1].params.url",
            "tasks[1]: scrape: missing required parameter 'url'",
        ),
        ("/batches", {"tasks": [{"task": "pi"}, "pi"]}, "tasks[1]", 'tasks[1]: expected {"task": NAME'),
    ],
)
def test_bad_requests_are_422_naming_the_field_and_enqueue_nothing(
    conn: redis.Redis, api: FlaskClient, path: str, body: object, field: str, message: str
) -> None:
    response = api.post(path, json=body)
    assert response.status_code == 422
    assert response.json["field"] == field and message in response.json["error"]
    assert not conn.keys("rq:job:*") and not conn.smembers(delivery.PENDING)


def test_malformed_oversized_and_unknown_requests_answer_json(api: FlaskClient) -> None:
    assert api.post("/jobs", data=b"{not json", content_type="application/json").status_code == 400
    nested = [b"[" * 100_000, b'{"task": "pi", "params": {"samples": ' + b"[" * 5000 + b"]" * 5000 + b"}}"]
    for body in nested:
        deep = api.post("/jobs", data=body, content_type="application/json")
        assert deep.status_code == 400
        assert deep.json == {"error": "the body nests arrays and objects deeper than 32 levels", "field": None}
    brackets_in_text = {"task": "sleep", "queue": "[" * 100, "params": {"seconds": 1}}
    assert api.post("/jobs", json=brackets_in_text).json["field"] == "queue"  # text is not nesting
    big = api.post("/jobs", data=b"x" * (GATEWAY_MAX_BODY + 1), content_type="application/json")
    assert big.status_code == 413 and big.json["error"] == f"request body over {GATEWAY_MAX_BODY:,} bytes"
    assert api.get("/jobs/no-such-job").status_code == 404
    assert api.get("/batches/nope").json == {"error": "no such batch: nope (batches are kept for a day)", "field": None}
    assert api.put("/jobs").status_code == 405 and api.get("/elsewhere").status_code == 404


def test_a_result_that_is_not_json_is_shown_as_unreadable_not_a_500(conn: redis.Redis, api: FlaskClient) -> None:
    """A foreign client wrote a job's result as pickle: the job and its batch are still served."""
    sent = api.post("/jobs", json={"task": "pi", "params": {"samples": 10}}).json
    job_id = sent["job_ids"][0]
    conn.hset(f"rq:job:{job_id}", "status", "finished")
    conn.xadd(
        f"rq:results:{job_id}",
        {"type": 1, "worker_name": "elsewhere", "return_value": base64.b64encode(pickle.dumps({"pi": 3.1})).decode()},
    )
    job = api.get(f"/jobs/{job_id}")
    assert job.status_code == 200, job.json
    assert job.json["status"] == "finished" and job.json["result"] is None
    assert job.json["unreadable"].startswith("the result is not JSON (UnicodeDecodeError)")
    batch = api.get(f"/batches/{sent['batch_id']}")
    assert batch.status_code == 200 and batch.json["jobs"] == [{"id": job_id, "status": "finished"}]


def test_health_shows_redis_and_the_helper_threads(conn: redis.Redis, api: FlaskClient) -> None:
    assert api.get("/health").json == {"ok": True, "redis": True, "helpers": []}


def test_a_token_is_required_when_set(conn: redis.Redis) -> None:
    client = create_app(conn, token=TOKEN).test_client()
    assert client.get("/tasks").status_code == 401
    assert client.get("/tasks", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/tasks", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["--bind", "0.0.0.0"], {}, "refusing to listen on 0.0.0.0 without credentials"),
        (["--token", "short"], {}, "Invalid value for '--token': use at least 16 characters"),
        ([], {"WORKQUEUE_ALLOW_NETWORKS": "10.0.0.0/8,nope"}, "WORKQUEUE_ALLOW_NETWORKS: 'nope' is not a network"),
    ],
)
def test_gateway_refuses_to_listen_beyond_loopback_without_a_token(
    redis_url: str, args: list, env: dict, message: str
) -> None:
    result = run_cli("gateway_main.py", *args, env=cli_env(REDIS_URL=redis_url, **env), timeout=30)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1


# Callbacks ---------------------------------------------------------------------------------------------


@pytest.fixture
def deliverer(conn: redis.Redis) -> Iterator[delivery.Deliverer]:
    """The gateway's delivery loop, in a thread of the test, with short backoffs."""
    stop = threading.Event()
    worker = delivery.Deliverer(conn, timeout=2.0, max_backoff=0.5)
    thread = threading.Thread(target=worker.run, args=(stop, 0.05), daemon=True)
    thread.start()
    yield worker
    stop.set()
    thread.join(10)


def enqueue_with_callback(conn: redis.Redis, url: str, secret: str) -> dict:
    """Two quick tasks through the API, their results to ``url``: the API's reply."""
    reply = (
        create_app(conn)
        .test_client()
        .post(
            "/batches",
            json={
                "tasks": [{"task": "primes", "params": {"n": 100}}, {"task": "pi", "params": {"samples": 10}}],
                "callback": {"url": url, "secret": secret},
            },
        )
    )
    assert reply.status_code == 201
    return reply.json


def test_results_are_signed_and_delivered_in_order_then_the_batch(
    conn: redis.Redis, processes: Processes, deliverer
) -> None:
    start_consumer(processes, conn, 1, "queue_one")
    with remote.ResultReceiver("127.0.0.1") as receiver:
        sent = enqueue_with_callback(conn, receiver.url, receiver.secret)
        got = collect(receiver)
    assert [p["type"] for p in got] == ["task", "task", "batch"]
    assert [p["job_id"] for p in got[:2]] == sent["job_ids"]
    assert got[0]["result"] == {"n": 100, "primes": 25} and got[0]["outcome"] == "finished" and got[0]["error"] is None
    assert (got[2]["total"], got[2]["finished"], got[2]["failed"]) == (2, 2, 0)
    assert receiver.tally.refused == 0 and not any(p["redelivery"] for p in got)
    # done with: forgotten, once the deliverer has had the batch's answer (the receiver has it first)
    wait_for(lambda: not conn.smembers(delivery.PENDING), 10, "the delivered batch to be forgotten")


def collect(receiver: remote.ResultReceiver, timeout: float = 20) -> list[dict]:
    """Every delivery up to the batch's end."""
    payloads = []
    for got in receiver.deliveries(timeout=timeout):
        assert got is not None, "no delivery within the timeout"
        payloads.append(got.payload)
        if got.payload["type"] == "batch":
            return payloads
    return payloads


def test_a_receiver_that_is_down_gets_everything_once_it_is_up(
    conn: redis.Redis, processes: Processes, deliverer
) -> None:
    start_consumer(processes, conn, 1, "queue_one")
    port, path, secret = free_port(), "/results/here", "a-secret-of-some-length"
    url = f"http://127.0.0.1:{port}{path}"  # nothing listens there yet: connections are refused
    sent = enqueue_with_callback(conn, url, secret)
    for job_id in sent["job_ids"]:
        wait_for(lambda job_id=job_id: status(conn, job_id) == "finished", 20, "the jobs to finish regardless")
    wait_for(
        lambda: int(conn.hget(delivery.callback_key(sent["batch_id"]), "failures") or 0) >= 2,
        10,
        "the gateway to retry",
    )
    with remote.ResultReceiver("127.0.0.1", port, secret=secret, path=path) as receiver:
        payloads = collect(receiver)
    assert [p["type"] for p in payloads] == ["task", "task", "batch"]
    assert not any(p["redelivery"] for p in payloads)  # refused connections never reached it


class Flaky:
    """A receiver that answers 500 to its first ``failures`` deliveries (after reading them)."""

    def __init__(self, inner: remote.ResultReceiver, failures: int) -> None:
        self.inner, self.failures = inner, failures
        self.take = inner.take

        def take(body: bytes, timestamp: str, signature: str) -> int:
            if self.failures > 0:
                self.failures -= 1
                return 500
            return self.take(body, timestamp, signature)

        inner.take = take


def test_a_failed_delivery_is_retried_and_marked_a_redelivery(
    conn: redis.Redis, processes: Processes, deliverer
) -> None:
    start_consumer(processes, conn, 1, "queue_one")
    with remote.ResultReceiver("127.0.0.1") as receiver:
        Flaky(receiver, failures=2)
        sent = enqueue_with_callback(conn, receiver.url, receiver.secret)
        payloads = collect(receiver)
    assert [p["job_id"] for p in payloads if p["type"] == "task"] == sent["job_ids"]
    assert payloads[0]["redelivery"] is True  # it may have reached the receiver the first time
    assert receiver.tally.unmarked_duplicates == 0 and len(receiver.tally.tasks) == 2


def test_a_forged_delivery_is_refused(conn: redis.Redis) -> None:
    with remote.ResultReceiver("127.0.0.1") as receiver:
        body = json.dumps({"type": "task", "delivery_id": "x:1", "job_id": "j"}).encode()
        stamp = f"{time.time():.3f}"
        assert receiver.take(body, stamp, delivery.sign("not-the-secret-at-all", stamp, body)) == 401
        assert receiver.take(body, "0", delivery.sign(receiver.secret, "0", body)) == 401  # too old: replayed
        assert receiver.take(body, stamp, delivery.sign(receiver.secret, stamp, body)) == 204
    assert receiver.tally.refused == 2


def test_a_signature_header_of_any_characters_is_refused_and_counted(conn: redis.Redis) -> None:
    with remote.ResultReceiver("127.0.0.1") as receiver:
        body = json.dumps({"type": "task", "delivery_id": "x:1", "job_id": "j"}).encode()
        stamp = f"{time.time():.3f}"
        for signature, timestamp in [
            ("sha256=\u00e9t\u00e9".encode(), stamp.encode()),
            (delivery.sign(receiver.secret, stamp, body).encode(), "１２３".encode()),
        ]:
            headers = {delivery.SIGNATURE_HEADER: signature, delivery.TIMESTAMP_HEADER: timestamp}
            assert httpx.post(receiver.url, content=body, headers=headers, timeout=10).status_code == 401
        assert receiver.take(body, stamp, "sha256=\u00e9") == 401
        raw = http.client.HTTPConnection(*receiver.server.server_address[:2], timeout=10)
        raw.putrequest("POST", receiver.path)
        raw.putheader("Content-Length", "x1")
        raw.endheaders()
        assert raw.getresponse().status == 413  # not a length: answered, not a dropped connection
        raw.close()
    assert receiver.tally.refused == 3 and not receiver.tally.tasks


def kill_thread(thread: threading.Thread) -> None:
    """End ``thread`` from outside with an exception it does not catch (as a bug would)."""

    class Killed(BaseException):
        pass

    assert ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(Killed)) == 1


def test_a_dead_delivery_thread_is_shown_and_restarted(conn: redis.Redis, processes: Processes) -> None:
    helpers = delivery.supervised(conn)
    client = create_app(conn, helpers=helpers).test_client()
    stop = threading.Event()
    watcher = helpers.start(stop)
    try:
        (callbacks,) = helpers.helpers
        assert client.get("/health").json["helpers"] == [
            {"name": "callbacks", "up": True, "restarts": 0, "last_error": None}
        ]
        kill_thread(callbacks.thread)
        wait_for(lambda: client.get("/health").status_code == 503, 20, "the dead thread to show")
        wait_for(lambda: client.get("/health").status_code == 200, 20, "the thread to be restarted")
        (shown,) = client.get("/health").json["helpers"]
        assert shown["up"] and shown["restarts"] == 1 and shown["last_error"].startswith("Killed")
        start_consumer(processes, conn, 1, "queue_one")
        with remote.ResultReceiver("127.0.0.1") as receiver:
            enqueue_with_callback(conn, receiver.url, receiver.secret)
            assert [p["type"] for p in collect(receiver)] == ["task", "task", "batch"]  # delivering again
    finally:
        stop.set()
        watcher.join(10)
        for helper in helpers.helpers:
            helper.thread.join(10)


# The round trip ----------------------------------------------------------------------------------------


def start_gateway(processes: Processes, redis_url: str, *args: str) -> str:
    port = free_port()
    processes.start("gateway_main.py", "--port", str(port), *args, env=cli_env(REDIS_URL=redis_url))
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: answers(base + "/openapi.json"), 20, "the gateway to answer")
    return base


@pytest.mark.slow
def test_bad_callbacks_an_old_gateway_accepted_never_stop_the_others(
    conn: redis.Redis, processes: Processes, redis_url: str
) -> None:
    """Batches whose callback URL the sender cannot use (an unparseable one, a metadata address),
    written straight into Redis as an older gateway accepted them, then a good batch: the good one's
    results arrive, the bad ones are given up, and the delivery thread never died."""
    start_consumer(processes, conn, 1, "queue_one")
    bad = []
    for url in ("http://[1.2.3.4]/", "http://169.254.169.254/latest/meta-data/"):
        batch_id = batches.new_id()
        delivery.register(conn, batch_id, url, "s" * 16)
        producer.enqueue(conn, [producer.TaskCall.build("pi", {"samples": 10})], "queue_one", batch_id=batch_id)
        bad.append(batch_id)
    gateway = start_gateway(processes, redis_url)
    gateway_process = processes.started[-1]
    with remote.ResultReceiver("127.0.0.1") as receiver:
        body = {
            "tasks": [{"task": "pi", "params": {"samples": 10}}] * 2,
            "callback": {"url": receiver.url, "secret": receiver.secret},
        }
        sent = httpx.post(gateway + "/batches", json=body, timeout=30).json()
        payloads = collect(receiver)
    assert [p["type"] for p in payloads] == ["task", "task", "batch"] and payloads[-1]["batch_id"] == sent["batch_id"]
    wait_for(lambda: not conn.smembers(delivery.PENDING), 60, "the bad batches to be given up")
    health = httpx.get(gateway + "/health", timeout=30).json()
    assert health["helpers"] == [{"name": "callbacks", "up": True, "restarts": 0, "last_error": None}]
    log = gateway_process.output()[1]
    assert f"giving up the callbacks of batch {bad[0]} after {DELIVERY_MAX_ERRORS} errors, the last: InvalidURL" in log
    assert (
        f"giving up the callbacks of batch {bad[1]} after {DELIVERY_MAX_ERRORS} errors, the last: AddressRefused: "
        "refused: 169.254.169.254 is a cloud metadata address (never allowed)"
    ) in log


def test_round_trip_producer_threads_gateway_workers_and_back(
    conn: redis.Redis, processes: Processes, redis_url: str
) -> None:
    start_consumer(processes, conn, 2, "queue_one")
    gateway = start_gateway(processes, redis_url, "--token", TOKEN)
    # The producer has no way to Redis: its URL points nowhere.
    env = cli_env(REDIS_URL="redis://127.0.0.1:1/0", WORKQUEUE_GATEWAY_TOKEN=TOKEN)
    result = run_cli(
        "producer_main.py",
        "--via",
        gateway,
        "--task",
        "pi",
        "--param",
        "samples=2000",
        "--count",
        "300",
        "--threads",
        "4",
        "--wait",
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert sum(" pi finished in " in line for line in lines) == 300
    assert len([line for line in lines if line.startswith("batch ") and ": finished" in line]) == 4
    assert "all 4 batches: finished 300, failed 0 of 300" in result.stdout
    assert (
        "results received by callback: 300 of 300, 0 marked redeliveries, 0 unmarked duplicates, 0 refused signatures"
    ) in result.stdout
    assert Queue("queue_one", connection=conn).finished_job_registry.count == 300


@pytest.mark.slow
def test_producer_via_a_failing_task_exits_1_and_bad_uses_exit_2(
    conn: redis.Redis, processes: Processes, redis_url: str
) -> None:
    start_consumer(processes, conn, 1, "queue_one")
    gateway = start_gateway(processes, redis_url)
    env = cli_env(REDIS_URL="redis://127.0.0.1:1/0")
    failed = run_cli(
        "producer_main.py",
        "--via",
        gateway,
        "--task",
        "scrape",
        "--param",
        "url=http://127.0.0.1:1/",
        "--param",
        "timeout=1",
        "--retries",
        "0",
        "--wait",
        "--quiet",
        env=env,
        timeout=60,
    )
    assert failed.returncode == 1 and "finished 0, failed 1 of 1" in failed.stdout
    for args, message in [
        (["--via", "ftp://x", "--task", "pi"], "--via 'ftp://x': expected the gateway's URL"),
        (["--threads", "2", "--task", "pi"], "--threads, --callback-host and --callback-port go with --via URL"),
        (["--via", gateway, "--task", "pi", "--max-queued", "5"], "--via sends through the gateway"),
        (["--via", gateway, "--task", "pi", "--param", "samples=0"], "samples: '0' is out of bounds"),
    ]:
        result = run_cli("producer_main.py", *args, env=env, timeout=30)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
    down = run_cli("producer_main.py", "--via", f"http://127.0.0.1:{free_port()}", "--task", "pi", env=env, timeout=30)
    assert down.returncode == 1 and "cannot reach the gateway" in down.stderr
