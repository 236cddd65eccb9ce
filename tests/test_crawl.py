"""The polite crawler against a 300-page site served by the test itself: a robots.txt that disallows
a path, links that loop back, to other sites and in other spellings; every allowed page is fetched
once, none disallowed, max_pages holds over the whole crawl, and the batch ends."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from rq import Queue

import workqueue
from task_def import crawl
from tests.helpers import ROOT, Processes, QuietHandler, run_cli, serving, start_consumer
from workqueue import crawling, network
from workqueue.gateway import create_app

PAGES = 300


class Site(http.server.ThreadingHTTPServer):
    """Page 0 is ``/``, page i ``/p/i``; page i links to 2i+1 and 2i+2 (a tree), back to ``/`` and to
    its parent, to itself with a fragment, to ``/private/i`` (robots.txt disallows it), elsewhere."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: Counter[str] = Counter()
        self.lock = threading.Lock()


def _page_path(i: int) -> str:
    return "/" if i == 0 else f"/p/{i}"


class _Handler(QuietHandler):
    server: Site

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.requests[self.path] += 1
        if self.path == "/robots.txt":
            self.send(200, "text/plain", "User-agent: *\nDisallow: /private/\n")
            return
        i = 0 if self.path == "/" else int(self.path[3:]) if self.path.startswith("/p/") else -1
        if not 0 <= i < PAGES:
            self.send(404, "text/html", "<title>gone</title>")
            return
        links = [_page_path(c) for c in (2 * i + 1, 2 * i + 2) if c < PAGES]
        links += ["/", _page_path((i - 1) // 2) if i else "/", f"{_page_path(i)}#top", f"/private/{i}"]
        links += ["http://127.0.0.2:9/elsewhere", "mailto:someone@example.com", "javascript:void(0)"]
        body = f"<html><head><title>Page {i}</title></head><body>"
        body += "".join(f"<a href='{href}'>{n}</a>" for n, href in enumerate(links)) + "</body></html>"
        self.send(200, "text/html; charset=utf-8", body)


@pytest.fixture
def site() -> Iterator[Site]:
    with serving(Site()) as server:
        yield server


def _room_for_the_test_site() -> None:
    """The crawl's own politeness (1 request a second, 2 at once, per domain) would make 300 pages
    take five minutes: where per-key limits exist, the test's domain gets a generous rule."""
    rule = ["domain:127.0.0.1", "--rate", "1000/s", "--concurrency", "8"]
    result = subprocess.run(
        [sys.executable, "-m", "workqueue", "limit", "set", *rule], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 or "No such command" in result.stderr, result.stderr


def _crawl_args(site: Site, *params: str) -> list[str]:
    url = f"http://127.0.0.1:{site.server_address[1]}/"
    return ["producer_main.py", "--task", "crawl", "--param", f"url={url}", *params]


@pytest.mark.slow
def test_a_crawl_finds_every_allowed_page_once_and_none_disallowed(
    conn, processes: Processes, site: Site, tmp_path: Path
) -> None:
    _room_for_the_test_site()
    start_consumer(processes, conn, 4)
    out = tmp_path / "pages.jsonl"
    args = [*_crawl_args(site, "max_pages=1000", "max_depth=12"), "--wait", "--quiet", "--results", str(out)]
    result = run_cli(*args, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    expected = {_page_path(i) for i in range(PAGES)}
    fetched = {path: n for path, n in site.requests.items() if path != "/robots.txt"}
    assert fetched == dict.fromkeys(expected, 1)  # every page once; nothing under /private/, nothing else
    assert site.requests["/robots.txt"] == 1  # asked once for the whole crawl
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == PAGES and {page["status"] for page in lines} == {200}
    assert sorted(page["title"] for page in lines) == sorted(f"Page {i}" for i in range(PAGES))
    root = next(page for page in lines if page["depth"] == 0)
    assert root["links"] == [f"{root['url']}p/1", f"{root['url']}p/2", root["url"]]  # robots, site, spelling
    assert f"crawl: {PAGES} pages, errors: none; domains: 127.0.0.1:{site.server_address[1]}" in result.stdout
    assert f"finished {PAGES}, failed 0 of {PAGES}" in result.stdout
    assert Queue("queue_one", connection=conn).count == 0


def test_max_pages_and_max_depth_hold_over_the_whole_crawl(conn, processes: Processes, site: Site) -> None:
    _room_for_the_test_site()
    start_consumer(processes, conn, 4)
    url = f"http://127.0.0.1:{site.server_address[1]}/"
    batch = workqueue.enqueue("crawl", {"url": url, "max_pages": 25, "max_depth": 10})
    summary = batch.wait(timeout=300)
    assert summary.done and summary.total == 25 and summary.finished == 25
    assert len(batch.results()) == 25 == len(workqueue.results(batch.id))
    shallow = workqueue.enqueue("crawl", {"url": url, "max_depth": 2})
    assert shallow.wait(timeout=300).total == 7  # the root, 2 children, 4 grandchildren
    assert sorted(page["depth"] for page in shallow.results()) == [0, 1, 1, 2, 2, 2, 2]


@pytest.mark.parametrize(
    ("param", "message"),
    [
        ("url=ftp://example.com/", "url: 'ftp://example.com/' must be an http:// or https:// URL with a host"),
        (f"max_pages={crawl.MAX_PAGES + 1}", f"max_pages: '{crawl.MAX_PAGES + 1}' is out of bounds"),
        ("max_depth=-1", "max_depth: '-1' is out of bounds, expected 0 <= max_depth <= 20"),
        ("same_site=maybe", "same_site: expected true or false, got 'maybe'"),
    ],
)
def test_bad_crawl_parameters_exit_2_with_one_line(conn, param: str, message: str) -> None:
    result = run_cli("producer_main.py", "--task", "crawl", "--param", "url=https://example.com/", "--param", param)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert Queue("queue_one", connection=conn).count == 0


def test_results_go_with_wait(conn) -> None:
    result = run_cli(*["producer_main.py", "--task", "crawl", "--param", "url=https://example.com/"], "--results", "x")
    assert result.returncode == 2 and "--results FILE goes with --wait" in result.stderr


@pytest.mark.parametrize(
    ("href", "expected"),
    [
        ("HTTP://Example.COM:80/a#frag", "http://example.com/a"),
        ("https://example.com:443", "https://example.com/"),
        ("../b?x=1", "http://site:8080/b?x=1"),
        ("mailto:a@b", None),
        ("http://[::1]:99/", "http://[::1]:99/"),
    ],
)
def test_links_are_normalised_to_one_spelling(href: str, expected: str | None) -> None:
    assert crawl.normalise(href, "http://site:8080/dir/page") == expected


def test_a_disallowed_missing_or_unreachable_page_is_an_error_of_the_page_not_of_its_job(
    conn, processes: Processes, site: Site
) -> None:
    _room_for_the_test_site()
    start_consumer(processes, conn, 2)
    base = f"http://127.0.0.1:{site.server_address[1]}"
    starts = [f"{base}/private/1", f"{base}/p/{PAGES + 1}", "http://127.0.0.1:1/"]
    batch = workqueue.enqueue_many([("crawl", {"url": url, "max_depth": 0}) for url in starts])
    summary = batch.wait(timeout=120)
    assert summary.finished == 3 and summary.failed == 0
    errors = {page["url"]: page["error"] for page in batch.results()}
    assert errors == {starts[0]: "robots.txt", starts[1]: "HTTP 404", starts[2]: "ConnectError"}
    assert site.requests["/private/1"] == 0
    assert crawling.summarise(batch.results()).errors == {"robots.txt": 1, "HTTP 404": 1, "ConnectError": 1}


def test_the_gateway_refuses_bad_crawls_with_422(conn) -> None:
    app = create_app(conn)
    app.testing = True
    api = app.test_client()
    for params, field in [
        ({"url": "ftp://example.com/"}, "params.url"),
        ({"url": "https://example.com/", "max_pages": crawl.MAX_PAGES + 1}, "params.max_pages"),
        ({"url": "https://example.com/", "max_depth": 21}, "params.max_depth"),
        ({"url": "https://example.com/", "same_site": "yes"}, "params.same_site"),
    ]:
        response = api.post("/jobs", json={"task": "crawl", "params": params})
        assert response.status_code == 422 and response.json["field"] == field, response.json
    assert api.post("/jobs", json={"task": "crawl", "params": {"url": "https://example.com/"}}).status_code == 201


def test_a_threads_pages_share_its_kept_client_and_its_connection_to_the_site(monkeypatch) -> None:
    from tests.test_scrape_http import Site as KeptAliveSite  # HTTP/1.1: connections kept alive, counted

    monkeypatch.delenv(network.ALLOW_ENV, raising=False)
    with serving(KeptAliveSite()) as kept:
        for path in ("/a", "/b", "/login"):  # /login sets a cookie (its redirect's next hop sends it)
            page = crawl.crawl(f"{kept.url}{path}", max_depth=0)
            assert page["status"] == 200 and page["error"] is None, page
        assert crawl.crawl(f"{kept.url}/cookie-check", max_depth=0)["title"] == "none"  # no cookie carried over
    assert kept.connections == 1  # before: one per page (a client per page)
    assert kept.requests["/robots.txt"] == 4  # no host outside a worker: asked by each page
