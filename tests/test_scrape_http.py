"""What a scrape's HTTP (httpx, through ``network.reused_client``) keeps of a browser's behaviour: bodies sent
gzip- or deflate-encoded are decoded (``bytes`` counts the decoded page), the page's charset is
used, a cookie a redirect sets is sent on the scrape's next hops to that site only and never to the
next scrape, credentials in the URL go to its own site only, a redirect's connection serves the next
hop, a kept connection its site has closed is replaced, a certificate the system does not trust is
refused, one it trusts is accepted (the CA bundle loaded at the first TLS connection, not before),
and a redirect loop ends after 10 redirects with httpx's TooManyRedirects. A real local HTTP/1.1
server; nothing mocked."""

from __future__ import annotations

import gzip
import http.server
import shutil
import ssl
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from task_def.scrape import scrape
from tests.helpers import QuietHandler, serving
from workqueue import network

PAGE = "<html><head><title>café crème</title></head><body><a href='/a'>one</a> two three</body></html>"


class Site(http.server.ThreadingHTTPServer):
    """An HTTP/1.1 site (connections kept alive, counted; requests counted by path)."""

    daemon_threads = True

    def __init__(self) -> None:
        self.connections = 0
        self.requests: dict[str, int] = {}
        self.close_after_answer = False
        site = self

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = site.close_after_answer  # without saying so

            def do_GET(self) -> None:
                site.requests[self.path] = site.requests.get(self.path, 0) + 1
                html = {"Content-Type": "text/html; charset=utf-8"}
                if self.path == "/gzip":
                    self.answer(200, gzip.compress(PAGE.encode()), {**html, "Content-Encoding": "gzip"})
                elif self.path == "/deflate":  # with its zlib wrapper, as the RFC says
                    self.answer(200, zlib.compress(PAGE.encode()), {**html, "Content-Encoding": "deflate"})
                elif self.path == "/raw-deflate":  # without it, as some servers send it
                    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
                    body = packer.compress(PAGE.encode()) + packer.flush()
                    self.answer(200, body, {**html, "Content-Encoding": "deflate"})
                elif self.path == "/latin-1":
                    self.answer(200, PAGE.encode("latin-1"), {"Content-Type": "text/html; charset=ISO-8859-1"})
                elif self.path == "/login":
                    self.answer(302, b"moved", {"Location": "/show", "Set-Cookie": "session=one; Path=/"})
                elif self.path.startswith("/elsewhere"):  # the same server under another name
                    port = site.server_address[1]
                    self.answer(302, b"", {"Location": f"http://localhost:{port}/show", "Set-Cookie": "s=1; Path=/"})
                elif self.path == "/away-with-credentials":  # to the same server under another name
                    self.answer(302, b"", {"Location": f"http://localhost:{site.server_address[1]}/who"})
                elif self.path == "/who":
                    self.answer(200, f"<title>{self.headers.get('Authorization') or 'nobody'}</title>".encode(), html)
                elif self.path == "/loop":
                    self.answer(302, b"", {"Location": "/loop"})
                else:
                    sent = self.headers.get("Cookie") or "none"
                    self.answer(200, f"<html><head><title>{sent}</title></head></html>".encode(), html)

        super().__init__(("127.0.0.1", 0), Handler)

    def get_request(self):
        self.connections += 1
        return super().get_request()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def site(monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    monkeypatch.delenv(network.ALLOW_ENV, raising=False)
    with serving(Site()) as server:
        yield server


@pytest.mark.parametrize("path", ["/gzip", "/deflate", "/raw-deflate"])
def test_an_encoded_body_is_decoded(site: Site, path: str) -> None:
    result = scrape(site.url + path)
    assert result["title"] == "café crème" and result["links"] == 1 and result["words"] == 3
    assert result["bytes"] == len(PAGE.encode()) and not result["truncated"]


def test_the_charset_the_page_names_is_used(site: Site) -> None:
    assert scrape(site.url + "/latin-1")["title"] == "café crème"


def test_a_cookie_a_redirect_sets_goes_to_the_next_hop_on_one_connection_and_never_to_the_next_scrape(
    site: Site,
) -> None:
    result = scrape(site.url + "/login")
    assert result["title"] == "session=one" and result["final_url"] == site.url + "/show"
    assert site.connections == 1  # the redirect's body was read: its connection served the next hop
    assert scrape(site.url + "/show")["title"] == "none"


def test_a_cookie_is_sent_to_the_site_that_set_it_only(site: Site) -> None:
    result = scrape(site.url + "/elsewhere")  # 127.0.0.1 sets it, then redirects to localhost
    assert result["title"] == "none" and result["final_url"].startswith("http://localhost:")


def test_a_redirect_loop_ends_after_ten_redirects(site: Site) -> None:
    with pytest.raises(httpx.TooManyRedirects):
        scrape(site.url + "/loop")
    assert site.requests["/loop"] == 11  # the page, then 10 redirects followed


def test_credentials_in_the_url_go_to_its_own_site_only(site: Site) -> None:
    with_credentials = site.url.replace("http://", "http://ann:s%20cret@")
    assert scrape(with_credentials + "/who")["title"] == "Basic YW5uOnMgY3JldA=="  # ann:s cret
    assert scrape(with_credentials + "/away-with-credentials")["title"] == "nobody"


def test_a_kept_connection_its_site_closed_meanwhile_is_replaced(site: Site) -> None:
    site.close_after_answer = True  # answers as if it kept the connection alive, then closes it
    assert [scrape(site.url + "/show")["title"] for _ in range(3)] == ["none"] * 3
    assert site.connections == 3


def _certificate(tmp_path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)  # fmt: skip
    return key, cert


def _tls_site(key: Path, cert: Path) -> Site:
    server = Site()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    return server


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a certificate")
def test_a_certificate_the_system_does_not_trust_is_refused(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(network.ALLOW_ENV, raising=False)
    server = _tls_site(*_certificate(tmp_path))
    with serving(server), pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        scrape(f"https://127.0.0.1:{server.server_address[1]}/show", timeout=10)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a certificate")
def test_the_ca_bundle_is_loaded_at_the_first_tls_connection_and_its_certificates_are_trusted(
    site: Site, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(network, "_tls_context", None)  # this process's, made again here
    assert scrape(site.url + "/show", timeout=10)["status"] == 200
    assert network._tls_context is None  # plain HTTP: no CA bundle loaded (~25 ms of CPU)
    key, cert = _certificate(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # httpx's trust store: this certificate only
    server = _tls_site(key, cert)
    with serving(server):
        found = scrape(f"https://127.0.0.1:{server.server_address[1]}/show", timeout=10)
    assert found["status"] == 200 and found["title"] == "none"
    assert network._tls_context is not None
