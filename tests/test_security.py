"""Redis credentials and TLS, end to end: ACL users and rediss:// with a CA against a real
TLS-enabled redis-server (Debian's; the bundled one is built without TLS); secrets never printed."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import redis
import trustme

from tests.helpers import free_port, run_cli, wait_for

SYSTEM_REDIS = shutil.which("redis-server", path="/usr/bin:/usr/local/bin")


def tls_supported() -> bool:
    if not SYSTEM_REDIS:
        return False
    probe = subprocess.run([SYSTEM_REDIS, "--tls-port", "0", "--port", "0", "--test-memory", "1"],
                           capture_output=True, text=True)  # fmt: skip
    return "not supported" not in (probe.stdout + probe.stderr).lower()


pytestmark = pytest.mark.skipif(
    not tls_supported(), reason="needs a redis-server built with TLS (apt-get install redis-server)"
)


@pytest.fixture(scope="module")
def tls_redis():
    """A TLS-only redis-server whose default user is off and whose one ACL user is alice."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    folder = Path(tempfile.mkdtemp(prefix="wq-tls-"))
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    cert.cert_chain_pems[0].write_to_path(str(folder / "server.pem"))
    cert.private_key_pem.write_to_path(str(folder / "server.key"))
    port = free_port()
    process = subprocess.Popen(
        [SYSTEM_REDIS, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
         "--tls-cert-file", str(folder / "server.pem"), "--tls-key-file", str(folder / "server.key"),
         "--tls-ca-cert-file", str(folder / "ca.pem"), "--tls-auth-clients", "no", "--save", "",
         "--user", "default", "off", "--user", "alice", "on", ">s3cret-pw", "~*", "&*", "+@all"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    ca_path = folder / "ca.pem"

    def ready() -> bool:
        try:
            return redis.Redis(
                port=port, ssl=True, ssl_ca_certs=str(ca_path), username="alice", password="s3cret-pw"
            ).ping()
        except redis.ConnectionError:
            return False

    wait_for(ready, 10, "the TLS redis-server")
    yield port, ca_path
    process.terminate()
    process.wait(10)
    shutil.rmtree(folder, ignore_errors=True)


def test_producer_and_workers_over_tls_with_an_acl_user(tls_redis) -> None:
    port, ca = tls_redis
    url = f"rediss://alice:s3cret-pw@127.0.0.1:{port}/0?ssl_ca_certs={ca}"
    produced = run_cli("producer_main.py", "--task", "primes", "--param", "n=1000", "--count", "3", "--redis-url", url)
    assert produced.returncode == 0, produced.stderr
    assert "s3cret-pw" not in produced.stdout + produced.stderr and "alice:***@" in produced.stdout
    consumed = run_cli("consumer_main.py", "--workers", "2", "--burst", "--redis-url", url)
    assert consumed.returncode == 0, consumed.stderr
    assert "done 3, failed 0" in consumed.stdout and "s3cret-pw" not in consumed.stdout + consumed.stderr
    conn = redis.Redis(port=port, ssl=True, ssl_ca_certs=str(ca), username="alice", password="s3cret-pw")
    assert conn.zcard("rq:finished:queue_one") == 3


@pytest.mark.parametrize(
    "url, message",
    [
        ("rediss://alice:wrong-pw@127.0.0.1:{port}/0?ssl_ca_certs={ca}", "refused the credentials"),
        ("rediss://bob:s3cret-pw@127.0.0.1:{port}/0?ssl_ca_certs={ca}", "refused the credentials"),
        ("rediss://alice:s3cret-pw@127.0.0.1:{port}/0", "cannot reach Redis"),  # no CA: the certificate fails
        ("redis://alice:s3cret-pw@127.0.0.1:{port}/0", "cannot reach Redis"),  # plain text to a TLS port
    ],
)
def test_bad_credentials_or_certificates_are_exit_1_and_print_no_secret(tls_redis, url: str, message: str) -> None:
    port, ca = tls_redis
    result = run_cli("producer_main.py", "--task", "sleep", "--redis-url", url.format(port=port, ca=ca), timeout=60)
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1
    assert "s3cret-pw" not in result.stderr and "wrong-pw" not in result.stderr
