"""The network policy (``workqueue.network``) that tasks and callbacks connect through: which
addresses it refuses, that it checks every redirect hop and refuses before connecting, and that a
worker's scrape job fails saying so when its environment does not allow the address."""

from __future__ import annotations

import http.server
import ipaddress
from collections.abc import Iterator

import pytest
import redis
from rq.job import Job

from task_def.scrape import scrape
from tests.helpers import Processes, QuietHandler, child_pids, cli_env, serving, wait_for, workers
from workqueue import network, producer
from workqueue.jobs import SERIALIZER, CatalogueJob

DEFAULT = network.NetworkPolicy.parse(network.DEFAULT_ALLOW)


@pytest.mark.parametrize(
    "address, refused",
    [
        ("8.8.8.8", None),
        ("2606:4700::1111", None),
        ("127.0.0.1", None),
        ("::1", None),
        ("::ffff:127.0.0.1", None),
        ("10.0.0.5", "10.0.0.5 is a private address (allow it with WORKQUEUE_ALLOW_NETWORKS)"),
        ("172.16.3.4", "a private address"),
        ("192.168.1.1", "a private address"),
        ("fd12::1", "a private address"),
        ("100.64.0.1", "a shared (carrier-grade NAT) address"),
        ("0.0.0.0", "an unspecified address"),
        ("::", "an unspecified address"),
        ("224.0.0.1", "a multicast address"),
        ("240.0.0.1", "a private address"),
        ("::ffff:10.1.2.3", "(that is, 10.1.2.3) is a private address"),
        ("169.254.169.254", "169.254.169.254 is a cloud metadata address (never allowed)"),
        ("169.254.1.1", "169.254.1.1 is a link-local address (never allowed)"),
        ("fe80::1", "a link-local address (never allowed)"),
        ("fd00:ec2::254", "a cloud metadata address"),
        ("100.100.100.200", "a cloud metadata address"),
        ("::ffff:169.254.169.254", "a cloud metadata address"),
        ("64:ff9b::a9fe:a9fe", "a cloud metadata address"),
        ("2002:a9fe:a9fe::", "a cloud metadata address"),
    ],
)
def test_the_default_policy_allows_public_and_loopback_addresses_only(address: str, refused: str | None) -> None:
    why = DEFAULT.refusal(ipaddress.ip_address(address))
    assert (why is None) if refused is None else (why is not None and refused in why)


def test_link_local_and_metadata_are_refused_whatever_is_allowed() -> None:
    everything = network.NetworkPolicy.parse("0.0.0.0/0,::/0")
    assert everything.refusal(ipaddress.ip_address("10.0.0.5")) is None
    for address in ("169.254.169.254", "169.254.7.7", "fe80::1", "fd00:ec2::254", "100.100.100.200"):
        assert "never allowed" in everything.refusal(ipaddress.ip_address(address))
    with pytest.raises(network.AddressRefused, match=r"refused: 169\.254\.169\.254 is a cloud metadata address"):
        with network.client(everything, timeout=30) as client:
            client.get("http://169.254.169.254/latest/meta-data/")


def test_an_allow_list_that_is_not_cidrs_is_refused_with_the_variable_named() -> None:
    with pytest.raises(network.BadInput, match="WORKQUEUE_ALLOW_NETWORKS: 'nope' is not a network"):
        network.NetworkPolicy.parse("10.0.0.0/8, nope")
    assert network.NetworkPolicy.parse("").allowed == ()


class Counting(http.server.ThreadingHTTPServer):
    """A local server that counts the connections made to it and redirects /away to ``target``."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.connections = 0
        self.target = ""
        server = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                if self.path == "/away":
                    self.send(302, "text/html", "", {"Location": server.target})
                    return
                self.send(200, "text/html", "<html><head><title>internal</title></head><body>secret</body></html>")

        super().__init__((host, 0), Handler)

    def get_request(self):
        self.connections += 1
        return super().get_request()

    @property
    def url(self) -> str:
        return f"http://{self.server_address[0]}:{self.server_address[1]}"


@pytest.fixture
def local() -> Iterator[Counting]:
    with serving(Counting()) as server:
        yield server


def test_scrape_of_loopback_works_by_default_and_is_refused_before_connecting_otherwise(
    local: Counting, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(network.ALLOW_ENV, raising=False)
    assert scrape(local.url + "/")["title"] == "internal"
    before = local.connections
    monkeypatch.setenv(network.ALLOW_ENV, "10.0.0.0/8")
    with pytest.raises(
        network.AddressRefused,
        match=r"refused: 127\.0\.0\.1 is a loopback address \(allow it with "
        r"WORKQUEUE_ALLOW_NETWORKS\)",
    ):
        scrape(local.url + "/")
    monkeypatch.setenv(network.ALLOW_ENV, "")  # set empty: nothing but public addresses
    with pytest.raises(
        network.AddressRefused, match=r"refused: localhost resolves to 127\.0\.0\.1, a loopback address"
    ):
        scrape(local.url.replace("127.0.0.1", "localhost") + "/")
    assert local.connections == before  # refused before connecting


def test_every_redirect_hop_is_checked(local: Counting, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(network.ALLOW_ENV, raising=False)
    local.target = "http://10.0.0.5/internal"
    with pytest.raises(network.AddressRefused, match=r"refused: 10\.0\.0\.5 is a private address"):
        scrape(local.url + "/away")
    local.target = "http://169.254.169.254/latest/meta-data/"
    with pytest.raises(network.AddressRefused, match="cloud metadata address"):
        scrape(local.url + "/away")
    # Allowed: 127.0.0.1 only; the redirect goes to another loopback address, which is not.
    monkeypatch.setenv(network.ALLOW_ENV, "127.0.0.1/32")
    local.target = f"http://127.0.0.2:{local.server_address[1]}/"
    with pytest.raises(network.AddressRefused, match=r"refused: 127\.0\.0\.2 is a loopback address"):
        scrape(local.url + "/away")
    local.target = local.url + "/"
    assert scrape(local.url + "/away")["final_url"] == local.url + "/"


class KeepAlive(http.server.ThreadingHTTPServer):
    """An HTTP/1.1 page that keeps connections alive, counts them, sets a cookie and shows in its
    title the cookie it was sent (``none`` if none)."""

    daemon_threads = True

    def __init__(self) -> None:
        self.connections = 0

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                sent = self.headers.get("Cookie") or "none"
                page = f"<html><head><title>{sent}</title></head><body>page</body></html>"
                self.send(200, "text/html", page, {"Set-Cookie": "session=one-job; Path=/"})

        super().__init__(("127.0.0.1", 0), Handler)

    def get_request(self):
        self.connections += 1
        return super().get_request()


def test_scrapes_in_one_thread_reuse_its_connection_and_carry_no_cookie_over(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(network.ALLOW_ENV, raising=False)
    with serving(KeepAlive()) as server:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        titles = [scrape(url)["title"] for _ in range(3)]
        assert titles == ["none"] * 3  # each job sees only its own cookies
        assert server.connections == 1  # one connection kept alive from job to job


def run_scrape_on_a_worker(processes: Processes, conn: redis.Redis, url: str, retries: int = 0, **env: str) -> Job:
    """One scrape job (with ``retries``) run by a real consumer whose environment has ``env``."""
    consumer = processes.start("consumer_main.py", "--workers", "1", "--queue", "queue_one", env=cli_env(**env))
    wait_for(lambda: len([w for w in workers(conn) if w.pid in child_pids(consumer)]) == 1, 20, "a worker")
    call = producer.TaskCall.build("scrape", {"url": url, "timeout": 5}, retries=retries)
    (job,) = producer.enqueue(conn, [call], "queue_one").jobs
    wait_for(lambda: job.get_status(refresh=True).value in ("finished", "failed"), 30, "the job to end")
    processes.stop_all()
    return CatalogueJob.fetch(job.id, connection=conn, serializer=SERIALIZER)


@pytest.mark.slow
def test_a_worker_fails_a_refused_scrape_saying_why(conn: redis.Redis, processes: Processes, local: Counting) -> None:
    allowed = run_scrape_on_a_worker(processes, conn, local.url + "/", WORKQUEUE_ALLOW_NETWORKS=None)
    assert allowed.get_status().value == "finished" and allowed.return_value()["title"] == "internal"
    refused = run_scrape_on_a_worker(processes, conn, local.url + "/", retries=2, WORKQUEUE_ALLOW_NETWORKS="10.0.0.0/8")
    assert refused.get_status().value == "failed"
    assert len(refused.meta["attempts"]) == 1  # not retried: the policy would refuse it again
    error = refused.latest_result().exc_string
    assert (
        "AddressRefused: refused: 127.0.0.1 is a loopback address (allow it with WORKQUEUE_ALLOW_NETWORKS)" in error
    ), error
