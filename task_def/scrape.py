"""Fetching a web page and summarising it.

httpx does the HTTP (redirects, timeouts, streaming so the body size stays bounded), with a client
each thread keeps from job to job (``network.reused_client``: no cookies carried over); selectolax's
Lexbor engine parses the HTML the way a browser would. Every connection, redirects included, goes
through the network policy (``workqueue.network``): a page on a private or link-local address is
refused (``AddressRefused``: the job fails saying so), unless ``WORKQUEUE_ALLOW_NETWORKS`` allows it.
"""

from __future__ import annotations

import re
import time

import httpx
from selectolax.lexbor import LexborHTMLParser

from task_def.progress import report_progress
from workqueue import network

USER_AGENT = "workqueue-scraper/1.0 (+https://github.com/workqueue)"
HEADERS = {"User-Agent": USER_AGENT}


def scrape(url: str, timeout: float = 20.0, max_bytes: int = 5_000_000) -> dict:
    """Fetch ``url`` and return its status, final URL, title, link and word counts, size, time."""
    start = time.monotonic()
    report_progress(0, 3, f"fetching {url}")
    try:
        body, truncated, status, final_url, content_type, encoding = _fetch(url, timeout, max_bytes, start)
    except httpx.RemoteProtocolError as exc:
        if not _NOTHING_ANSWERED.search(str(exc)):
            raise
        # A site that closed a kept-alive connection as it was taken again answers nothing on it:
        # once more, on a new one (the failed use closed the client), as a browser does for a GET.
        body, truncated, status, final_url, content_type, encoding = _fetch(url, timeout, max_bytes, start)
    report_progress(2, 3, "parsing")
    title, links, words = None, 0, 0
    if "html" in content_type or not content_type:
        tree = LexborHTMLParser(bytes(body).decode(encoding, errors="replace"))
        node = tree.css_first("title")
        title = " ".join(node.text().split()) if node is not None else None
        links = len(tree.css("a[href]"))
        for node in tree.css("script, style, noscript, template"):
            node.decompose()
        text_root = tree.body or tree.root
        words = len(text_root.text(separator=" ").split()) if text_root is not None else 0
    report_progress(3, 3, "done")
    return {
        "url": url,
        "status": status,
        "final_url": final_url,
        "title": title,
        "links": links,
        "words": words,
        "bytes": len(body),
        "truncated": truncated,
        "elapsed": round(time.monotonic() - start, 3),
    }


#: httpcore's words for a connection closed before any answer came on it.
_NOTHING_ANSWERED = re.compile(r"disconnected without sending a response", re.IGNORECASE)


def _fetch(url: str, timeout: float, max_bytes: int, start: float) -> tuple[bytearray, bool, int, str, str, str]:
    """GET ``url`` through the thread's kept client, following redirects: its body (at most
    ``max_bytes``), whether that cut it, its status, final URL, content type and encoding."""
    body = bytearray()
    truncated = False
    with (
        network.reused_client(max_redirects=10) as client,
        client.stream("GET", url, timeout=timeout, follow_redirects=True, headers=HEADERS) as response,
    ):
        report_progress(1, 3, f"HTTP {response.status_code}, reading body")
        for chunk in response.iter_bytes():
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"reading {url} took longer than {timeout:g} s")
            room = max_bytes - len(body)
            if len(chunk) > room:
                body += chunk[:room]
                truncated = True
                break
            body += chunk
        encoding = response.encoding or "utf-8"
        return (
            body,
            truncated,
            response.status_code,
            str(response.url),
            response.headers.get("content-type", ""),
            encoding,
        )
