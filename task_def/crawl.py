"""A polite crawler: one page per job.

The task fetches one page (through the network policy, with our user agent, after asking the
site's robots.txt; on its thread's kept client, ``network.reused_client``, as ``scrape`` does: a
connection kept alive to the site serves its next page, no cookies carried over), reads its title
and links, and hands the links it may follow to the crawl's host: on a worker that is
``workqueue.crawling``, which adds them as jobs of the same batch, each URL once per crawl, up to
``max_pages`` over the whole crawl, and keeps each page's result. The task itself knows nothing of
Redis; outside a worker (no host) it fetches the page and follows nothing.
Politeness between pages (1 request a second and 2 at a time per domain unless a limit rule says
otherwise) is the per-key limits' work, keyed ``domain:<host>``.
"""

from __future__ import annotations

import time
import urllib.robotparser
from collections.abc import Iterable
from typing import Any, Protocol
from urllib.parse import urldefrag, urljoin, urlsplit, urlunsplit

import httpx
from selectolax.lexbor import LexborHTMLParser

from task_def.progress import report_progress
from task_def.scrape import HEADERS, USER_AGENT
from workqueue import network

#: Bounds of ``max_pages`` and ``max_depth``.
MAX_PAGES = 10_000
MAX_DEPTH = 20
#: Most of a page read (bytes), of a robots.txt, and most links a page's result keeps.
MAX_PAGE_BYTES = 5_000_000
MAX_ROBOTS_BYTES = 500_000
MAX_LINKS_KEPT = 200
_DISALLOW_ALL = "User-agent: *\nDisallow: /\n"
_DEFAULT_PORTS = {"http": 80, "https": 443}


class CrawlHost(Protocol):
    """Where a crawl lives between its pages (the worker installs one; see ``workqueue.crawling``)."""

    def depth(self) -> int:
        """How many links away from the crawl's start the running page is."""

    def robots(self, origin: str) -> str | None:
        """The crawl's copy of ``origin``'s robots.txt, or None if not fetched yet."""

    def keep_robots(self, origin: str, text: str) -> None:
        """Keep ``origin``'s robots.txt for the rest of the crawl."""

    def follow(self, links: list[str]) -> int:
        """Add the links as pages of the crawl (each once; up to its max_pages); how many were new."""

    def record(self, page: dict[str, Any]) -> None:
        """Keep the page's result with the crawl's others."""


_host: CrawlHost | None = None


def set_host(host: CrawlHost | None) -> None:
    """Where crawls live (the worker does this once, before forking)."""
    global _host
    _host = host


def normalise(url: str, base: str | None = None) -> str | None:
    """``url`` (relative to ``base``) as one spelling per page: no fragment, scheme and host in lower
    case, no default port, ``/`` for an empty path; None for anything but http(s) with a host."""
    url = urldefrag(urljoin(base, url) if base else url).url
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def site(url: str) -> str:
    """What ``same_site`` compares: the host and port (http and https of one host are one site)."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or _DEFAULT_PORTS.get(parts.scheme, 0)}"


def crawl(url: str, max_pages: int = 100, max_depth: int = 3, same_site: bool = True, timeout: float = 20.0) -> dict:
    """Fetch one page of a crawl: its status, title and links; the links it may follow become
    pages of the crawl. A page robots.txt disallows is not fetched; a fetch that fails is the page's
    error (kept, counted in the summary), not the job's."""
    start = time.monotonic()
    url = normalise(url) or url
    host = _host
    depth = host.depth() if host is not None else 0
    page: dict[str, Any] = {"url": url, "depth": depth, "status": None, "title": None, "links": [], "error": None}
    with network.reused_client(max_redirects=10) as client:  # the thread's, kept from page to page
        robots = _Robots(client, host, timeout)
        if not robots.allows(url):
            page["error"] = robots.failures.get(origin(url), "robots.txt")
        else:
            _fetch(client, url, page, timeout)
        links = [link for link in page["links"] if (not same_site or site(link) == site(url)) and robots.allows(link)]
    new = host.follow(links) if host is not None and depth < max_depth and links else 0
    page.update(links=links[:MAX_LINKS_KEPT], new=new, elapsed=round(time.monotonic() - start, 3))
    if host is not None:
        host.record(page)
    report_progress(1, 1, f"{len(links)} links, {new} new")
    return {**page, "links": len(links)}


def _fetch(client: httpx.Client, url: str, page: dict[str, Any], timeout: float) -> None:
    """Fill ``page`` with the fetch's status, title and links, or its error."""
    report_progress(0, 1, f"fetching {url}")
    start = time.monotonic()
    try:
        with client.stream("GET", url, timeout=timeout, follow_redirects=True, headers=HEADERS) as response:
            body = _read(response, MAX_PAGE_BYTES, start, timeout)
            page["status"] = response.status_code
            final_url = str(response.url)
            content_type = response.headers.get("content-type", "")
            encoding = response.encoding or "utf-8"
    except (httpx.HTTPError, network.AddressRefused, TimeoutError) as exc:
        page["error"] = type(exc).__name__
        return
    if page["status"] >= 400:
        page["error"] = f"HTTP {page['status']}"
    if "html" not in content_type and content_type:
        return
    tree = LexborHTMLParser(body.decode(encoding, errors="replace"))
    node = tree.css_first("title")
    page["title"] = " ".join(node.text().split())[:300] if node is not None else None
    page["links"] = list(_links(final_url, (a.attributes.get("href") for a in tree.css("a[href]"))))


def _read(response: httpx.Response, limit: int, start: float, timeout: float) -> bytes:
    body = bytearray()
    for chunk in response.iter_bytes():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"reading {response.url} took longer than {timeout:g} s")
        body += chunk[: limit - len(body)]
        if len(body) >= limit:
            break
    return bytes(body)


def _links(base: str, hrefs: Iterable[str | None]) -> Iterable[str]:
    """Each http(s) link once, normalised, in page order."""
    seen: set[str] = set()
    for href in hrefs:
        link = normalise(href, base) if href else None
        if link and link not in seen:
            seen.add(link)
            yield link


class _Robots:
    """Each origin's robots.txt, asked once per crawl (kept by the host), read by the standard library's parser."""

    def __init__(self, client: httpx.Client, host: CrawlHost | None, timeout: float) -> None:
        self._client = client
        self._host = host
        self._timeout = timeout
        self._parsers: dict[str, urllib.robotparser.RobotFileParser] = {}
        #: Why an origin's robots.txt could not be had (its fetch's error), when it could not.
        self.failures: dict[str, str] = {}

    def allows(self, url: str) -> bool:
        key = origin(url)
        parser = self._parsers.get(key)
        if parser is None:
            parser = self._parsers[key] = self._parser(key)
        return parser.can_fetch(USER_AGENT, url)

    def _parser(self, key: str) -> urllib.robotparser.RobotFileParser:
        text = self._host.robots(key) if self._host is not None else None
        if text is None:
            text = self._download(key)
            if self._host is not None and key not in self.failures:  # a failure is asked again by the next page
                self._host.keep_robots(key, text)
        parser = urllib.robotparser.RobotFileParser()
        parser.parse(text.splitlines())
        return parser

    def _download(self, key: str) -> str:
        """The robots.txt text, as RFC 9309 reads a fetch: none there (4xx) allows everything; a
        server error or no answer disallows everything (the crawl does not guess)."""
        try:
            with self._client.stream(
                "GET", f"{key}/robots.txt", timeout=self._timeout, follow_redirects=True, headers=HEADERS
            ) as response:
                body = _read(response, MAX_ROBOTS_BYTES, time.monotonic(), 30.0)
                if response.status_code >= 500:
                    self.failures[key] = f"HTTP {response.status_code}"
                    return _DISALLOW_ALL
                if response.status_code >= 400:
                    return ""
                return body.decode(response.encoding or "utf-8", errors="replace")
        except (httpx.HTTPError, network.AddressRefused, TimeoutError) as exc:
            self.failures[key] = type(exc).__name__
            return _DISALLOW_ALL
