"""The polite crawler's pace: pages per second per domain, against the limit set.

    .venv/bin/python bench/crawl.py [--domains 3] [--pages 100] [--rate 5/s] [--concurrency 2] [--workers 10]

Serves one site per domain (the loopback addresses 127.0.0.2, 127.0.0.3, ...: each its own
``domain:<host>`` key), crawls them all at once as one batch on a pool of ``--workers``, and prints
per domain the pages fetched, the seconds from its first request to its last, its pages per second
and the most requests it had in flight at once, beside the limit set: with the per-key limits
(``python -m workqueue limit``) the rule ``domain:*`` at ``--rate`` and ``--concurrency``; without
them, none. The figures are what this machine measured in this run; nothing asserts them.
"""

from __future__ import annotations

import argparse
import http.server
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from pool import consumers, running  # noqa: E402  (bench/pool.py)
from run import redis_server, wait_until  # noqa: E402

from workqueue import batches, crawling, producer  # noqa: E402

QUEUE = "bench"  # the queue run.consumers pools serve


class Site(http.server.ThreadingHTTPServer):
    """``pages`` pages on one address: page i links to 2i+1 and 2i+2 and back to ``/``. Records when
    each request came and how many were in flight at once."""

    daemon_threads = True

    def __init__(self, address: str, pages: int) -> None:
        super().__init__((address, 0), _Handler)
        self.pages = pages
        self.arrivals: list[float] = []
        self.in_flight = self.most_in_flight = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://{self.server_address[0]}:{self.server_address[1]}/"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Site

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.in_flight += 1
            self.server.most_in_flight = max(self.server.most_in_flight, self.server.in_flight)
        try:
            self._answer()
        finally:
            with self.server.lock:
                self.server.in_flight -= 1

    def _answer(self) -> None:
        if self.path == "/robots.txt":
            self._send(404, "text/plain", "")
            return
        with self.server.lock:
            self.server.arrivals.append(time.monotonic())
        i = 0 if self.path == "/" else int(self.path[3:]) if self.path.startswith("/p/") else 0
        links = "".join(f"<a href='/p/{c}'>{c}</a>" for c in (2 * i + 1, 2 * i + 2) if c < self.server.pages)
        self._send(200, "text/html", f"<title>{i}</title><a href='/'>home</a>{links}")

    def _send(self, status: int, ctype: str, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def serving(address: str, pages: int) -> Iterator[Site]:
    site = Site(address, pages)
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    try:
        yield site
    finally:
        site.shutdown()
        site.server_close()
        thread.join(10)


def set_limit(url: str, rate: str, concurrency: int) -> str:
    """The rule ``domain:*`` where the per-key limits exist: what the figures are measured against."""
    argv = [sys.executable, "-m", "workqueue", "limit", "set", "domain:*", "--rate", rate]
    result = subprocess.run(
        [*argv, "--concurrency", str(concurrency), "--redis-url", url],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if result.returncode == 0:
        return f"domain:* at {rate}, {concurrency} at a time"
    if "No such command" in result.stderr:
        return "none (this build has no per-key limits)"
    raise SystemExit(f"limit set failed: {result.stderr.strip()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", type=int, default=3, help="sites crawled at once, one per loopback address")
    parser.add_argument("--pages", type=int, default=100, help="pages per site (each crawl's max_pages)")
    parser.add_argument("--rate", default="5/s", help="the limit rule's rate per domain")
    parser.add_argument("--concurrency", type=int, default=2, help="the limit rule's requests at once per domain")
    parser.add_argument("--workers", type=int, default=10, help="workers in the pool")
    args = parser.parse_args()
    with redis_server() as (url, conn), ExitStack() as stack:
        sites = [stack.enter_context(serving(f"127.0.0.{2 + d}", args.pages)) for d in range(args.domains)]
        limit = set_limit(url, args.rate, args.concurrency)
        pool = consumers(url, args.workers, burst=False)["workqueue"]
        with running(pool, url):
            wait_until(lambda: len(conn.keys("rq:worker:*")) >= args.workers, 60, "the pool to start", poll=0.1)
            params = {"max_pages": args.pages, "max_depth": 20}
            calls = [producer.TaskCall.build("crawl", {"url": site.url, **params}) for site in sites]
            started = time.monotonic()
            submission = producer.enqueue(conn, calls, QUEUE)
            summary = batches.wait(conn, submission.batch_id, timeout=max(600.0, 3.0 * args.pages))
            wall = time.monotonic() - started
        pages = crawling.results(conn, submission.batch_id)
    print(f"crawl of {args.domains} sites × {args.pages} pages on {args.workers} workers; limit: {limit}")
    print(f"batch: {summary.finished} finished, {summary.failed} failed of {summary.total} in {wall:.1f} s")
    print(f"{'domain':<22}{'pages':>7}{'seconds':>9}{'pages/s':>9}{'most at once':>14}")
    for site in sites:
        span = site.arrivals[-1] - site.arrivals[0] if len(site.arrivals) > 1 else 0.0
        rate = (len(site.arrivals) - 1) / span if span else 0.0
        host = site.url.split("/")[2]
        print(f"{host:<22}{len(site.arrivals):>7}{span:>9.1f}{rate:>9.2f}{site.most_in_flight:>14}")
    print(f"results kept: {len(pages)} pages; pages/s = (requests - 1) / (last - first request), per domain")


if __name__ == "__main__":
    main()
