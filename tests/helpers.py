"""Plain helpers the tests share (no fixtures: those are in conftest.py and built from these).
Processes and servers a test starts here are always stopped: a redis-server of our own, the
repository's commands run to completion or in the background, and a few ways to reach a job,
a worker or the dashboard from a test."""

from __future__ import annotations

import http.server
import os
import re
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import psutil
import redis
from flask.testing import FlaskClient
from rq import Queue, Worker
from rq.job import Job

from tests import fault_tasks
from workqueue import embedded, producer
from workqueue.dashboard import create_app
from workqueue.jobs import SERIALIZER
from workqueue.worker import job_steps
from workqueue.worker.catalogue_worker import CatalogueWorker

ROOT = Path(__file__).resolve().parent.parent


# --- waiting, ports and servers ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition: Callable[[], object], timeout: float = 15.0, what: str = "condition") -> object:
    """Poll ``condition`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class RedisServer:
    """A redis-server process of our own, from the same binary the embedded default uses."""

    def __init__(self, *extra: str) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="wq-redis-"))
        self.process = subprocess.Popen(
            [str(embedded.server_binary()), "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.dir), "--save", "", "--appendonly", "no", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def wait_ready(self, password: str | None = None) -> None:
        def ping() -> bool:
            try:
                return redis.Redis(port=self.port, password=password, socket_connect_timeout=0.5).ping()
            except redis.ConnectionError:
                return False

        wait_for(ping, 10, "redis-server to answer")

    def restart(self, sig: int = signal.SIGTERM, down_for: float = 0.0) -> None:
        """Stop the server with ``sig`` (SIGKILL: a crash), wait ``down_for`` seconds, start it again."""
        self.process.send_signal(sig)
        self.process.wait(10)
        time.sleep(down_for)
        self.process = subprocess.Popen(self.process.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_ready()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


PAGES = {
    "/": (200, "text/html; charset=utf-8",
          "<html><head><title>  Test &amp; page </title><style>p {}</style></head>"
          "<body><h1>Hello world</h1><p>one two three</p><script>var hidden = 1;</script>"
          "<a href='/a'>first</a> <a href='/b'>second</a> <a>no href</a></body></html>"),
    "/big": (200, "text/html", "<html><body>" + "word " * 50_000 + "</body></html>"),
    "/plain": (200, "text/plain", "just text"),
    "/missing": (404, "text/html", "<html><head><title>Not found</title></head><body>nope</body></html>"),
}  # fmt: skip


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """A test site's handler: answers with :meth:`send` and logs nothing."""

    def send(self, status: int, ctype: str, body: str, headers: dict[str, str] | None = None) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


class PageHandler(QuietHandler):
    """Serves PAGES (anything else is /missing), /redirect to /, and /slow after 3 s."""

    def do_GET(self) -> None:
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/")
            self.end_headers()
            return
        if self.path == "/slow":
            time.sleep(3)
        self.send(*PAGES.get(self.path, PAGES["/missing"]))


# --- the repository's commands as processes ----------------------------------------------------


Server = TypeVar("Server", bound=socketserver.BaseServer)


@contextmanager
def serving(server: Server) -> Iterator[Server]:
    """``server`` answering from a thread of its own until the block ends; then shut down and closed."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def cli_env(**overrides: str | None) -> dict[str, str]:
    env = dict(os.environ)
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run_cli(
    script: str, *args: str, env: dict[str, str] | None = None, timeout: float = 120, input: str | None = None
) -> subprocess.CompletedProcess:
    """Run one of the repository's commands to completion, with no terminal on standard input."""
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args], cwd=ROOT, env=env or dict(os.environ),
        input=input if input is not None else "", capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


class Command(subprocess.Popen):
    """A command whose output goes to files, so a chatty process never blocks on a full pipe
    (a pipe nobody reads fills at 64 KiB and then stops the writer, its workers with it)."""

    def __init__(self, args: list[str], **kwargs) -> None:
        self._files = (tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+"))
        super().__init__(args, stdout=self._files[0], stderr=self._files[1], **kwargs)

    def output(self) -> tuple[str, str]:
        """Everything written to stdout and stderr so far."""
        texts = []
        for f in self._files:
            f.flush()
            f.seek(0)
            texts.append(f.read())
        return texts[0], texts[1]

    def communicate(self, input=None, timeout=None):
        self.wait(timeout)
        return self.output()


class Processes:
    """Long-running commands a test starts; every one is stopped (and its group killed) at the end."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []
        self.everything: list[subprocess.Popen] = []  # stopped or not, for :meth:`show_output`

    def start(self, script: str, *args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
        """Start a command, its output to files (or where ``stdout``/``stderr`` say, e.g. a terminal)."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        popen = subprocess.Popen if "stdout" in kwargs else Command
        process = popen(
            [sys.executable, str(ROOT / script), *args], cwd=ROOT, env=env or dict(os.environ),
            text=True, start_new_session=True, **kwargs,
        )  # fmt: skip
        self.started.append(process)
        self.everything.append(process)
        return process

    def show_output(self, limit: int = 20_000) -> None:
        """Print what each command wrote to its files (the last ``limit`` characters of each), for a
        failed test's report: pytest shows it as the teardown's captured output."""
        for process in self.everything:
            if isinstance(process, Command):
                out, err = process.output()
                print(f"--- {' '.join(map(str, process.args[1:]))} (pid {process.pid}, exit {process.returncode})")
                print(f"stdout:\n{out[-limit:]}\nstderr:\n{err[-limit:]}")

    def stop_all(self) -> None:
        """SIGTERM each command, wait, then make sure none of its descendants outlived it."""
        descendants: list[psutil.Process] = []
        started, self.started = self.started, []
        for process in started:
            if process.poll() is None:
                try:
                    descendants += psutil.Process(process.pid).children(recursive=True)
                except psutil.NoSuchProcess:
                    pass
                process.send_signal(signal.SIGTERM)
        for process in started:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        _gone, alive = psutil.wait_procs(descendants, timeout=20)
        for leftover in alive:
            leftover.kill()
        assert not alive, f"processes outlived their command: {alive}"


# --- jobs and workers --------------------------------------------------------------------------

FAULTS = {task.name: task for task in fault_tasks.TASKS}


def enqueue_jobs(
    conn: redis.Redis, task: str = "sleep", queue: str = "queue_one", count: int = 1, **params
) -> list[Job]:
    """``count`` jobs of one catalogue task (by default a 30 s sleep), as the producer enqueues them."""
    params = params or {"seconds": 30}
    return producer.enqueue(conn, [producer.TaskCall.build(task, params)] * count, queue).jobs


def enqueue_fault(conn: redis.Redis, name: str, queue: str = "queue_one", **params) -> Job:
    """One job of a task from tests/fault_tasks.py (or the catalogue); ``_timeout`` and ``_retries``
    set the job's own; the workers need WORKQUEUE_EXTRA_TASKS=tests.fault_tasks."""
    task = FAULTS[name] if name in FAULTS else __import__("task_def").get_task(name)
    timeout, retries = params.pop("_timeout", None), params.pop("_retries", None)
    call = producer.TaskCall(task, task.validate(params), retries=retries, timeout=timeout)
    return producer.enqueue(conn, [call], queue).jobs[0]


def fetch(conn: redis.Redis, job: Job) -> Job:
    return Job.fetch(job.id, connection=conn, serializer=SERIALIZER)


def status(conn: redis.Redis, job: Job) -> str:
    return fetch(conn, job).get_status().value


def workers(conn: redis.Redis, queue: str | None = None) -> list[Worker]:
    found = Worker.all(connection=conn)
    return [w for w in found if queue is None or queue in w.queue_names()]


def child_pids(process) -> set[int]:
    try:
        return {c.pid for c in psutil.Process(process.pid).children()}
    except psutil.NoSuchProcess:
        return set()


def start_consumer(processes: Processes, conn: redis.Redis, n: int, *queues: str):
    """A consumer of ``n`` workers on ``queues`` (default: queue_one), once all of them registered."""
    args = [arg for q in queues for arg in ("--queue", q)]
    consumer = processes.start("consumer_main.py", "--workers", str(n), *args)
    wait_for(lambda: len([w for w in workers(conn) if w.pid in child_pids(consumer)]) == n, 20, f"{n} workers")
    return consumer


def start_by_a_dead_worker(conn: redis.Redis, count: int, queue: str = "queue_one") -> str:
    """Start the first ``count`` jobs of ``queue`` as a worker does, then lose that worker (its
    registration gone, as after its lapse). Its name."""
    worker = CatalogueWorker([queue], connection=conn, name=f"gone.{uuid.uuid4().hex[:8]}")
    worker.register_birth()
    for _ in range(count):
        assert job_steps.claim(worker, [Queue(queue, connection=conn, serializer=SERIALIZER)]).execution is not None
    conn.delete(worker.key)
    conn.srem(Worker.redis_workers_keys, worker.key)
    return worker.name


# --- the dashboard -----------------------------------------------------------------------------


def get(url: str, headers: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def answers(url: str) -> bool:
    """Whether a web app answers at ``url`` (200, or 401 when it wants credentials)."""
    try:
        return get(url)[0] in (200, 401)
    except OSError:
        return False


def client_for(redis_url: str, **options) -> FlaskClient:
    app = create_app(redis_url, **options)
    app.testing = True
    return app.test_client()


def token(client: FlaskClient) -> str:
    """The CSRF token a page hands the browser (in the page: no cookie a script could read)."""
    page = client.get("/")
    assert page.status_code == 200
    return re.search(r'data-csrf="([^"]+)"', page.text).group(1)
