"""Per-key limits (``workqueue.limits``), against a real Redis, real consumers and a local test
site whose server records when each request to each "domain" (a loopback address) arrived and how
many were in flight at once."""

from __future__ import annotations

import http.server
import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from rq import Queue
from rq.job import Job

from tests.helpers import Processes, QuietHandler, cli_env, run_cli, start_consumer, wait_for, workers
from workqueue import batches, control, limits, producer
from workqueue.jobs import SERIALIZER
from workqueue.settings import LIMIT_RULES_FRESH

DOMAINS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


class Site:
    """One test site served on several loopback addresses (each a "domain"): it records each
    request's arrival (monotonic clock) per domain and the most in flight at once per domain."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay, self.lock = delay, threading.Lock()
        self.arrivals: dict[str, list[float]] = {d: [] for d in DOMAINS}
        self.in_flight = dict.fromkeys(DOMAINS, 0)
        self.most = dict.fromkeys(DOMAINS, 0)
        self.order: list[str] = []
        site = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                domain = self.server.server_address[0]  # type: ignore[index]
                with site.lock:
                    site.arrivals[domain].append(time.monotonic())
                    site.order.append(domain)
                    site.in_flight[domain] += 1
                    site.most[domain] = max(site.most[domain], site.in_flight[domain])
                time.sleep(site.delay)
                with site.lock:  # before the answer: the job ends only after it
                    site.in_flight[domain] -= 1
                self.send(200, "text/html", "<html><head><title>page</title></head><body>ok</body></html>")

        http.server.ThreadingHTTPServer.request_queue_size = 128  # ten workers at once: no refused connection
        self.servers = [http.server.ThreadingHTTPServer((d, 0), Handler) for d in DOMAINS]
        self.threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in self.servers]
        for thread in self.threads:
            thread.start()

    def url(self, domain: str, page: int) -> str:
        port = self.servers[DOMAINS.index(domain)].server_address[1]
        return f"http://{domain}:{port}/page/{page}"

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


@pytest.fixture
def site() -> Iterator[Site]:
    made = Site()
    yield made
    made.close()


def _scrapes(site: Site, domain: str, count: int, limit_key: str | None = None) -> list[producer.TaskCall]:
    return [
        producer.TaskCall.build("scrape", {"url": site.url(domain, n), "timeout": 20}, limit_key=limit_key)
        for n in range(count)
    ]


def _starts(conn: redis.Redis, batch: producer.Submission, domain: str) -> list[float]:
    """When each job of ``domain`` started (for the message of a failed assertion)."""
    from datetime import datetime

    out = []
    for job in batch.jobs:
        raw = conn.hgetall(job.key)
        if domain.encode() in raw.get(b"limit_key", b""):
            out.append(datetime.fromisoformat(raw[b"started_at"].decode().rstrip("Z")).timestamp())
    return sorted(out)


def _most_in_one_second(arrivals: list[float]) -> int:
    """The most requests any window of one second holds."""
    times = sorted(arrivals)
    return max((sum(1 for t in times[i:] if t < start + 1.0) for i, start in enumerate(times)), default=0)


def test_a_rate_per_domain_holds_across_ten_workers_while_others_run_at_full_speed(
    conn: redis.Redis, processes: Processes, site: Site
) -> None:
    limits.set_rule(conn, limits.make_rule("domain:*", "2/s"))
    limited = _scrapes(site, DOMAINS[0], 12) + _scrapes(site, DOMAINS[1], 12)
    # The third domain's jobs carry a key of their own (--limit-key) that no rule matches: unlimited.
    unlimited = _scrapes(site, DOMAINS[2], 20, limit_key="mirror:fast")
    start_consumer(processes, conn, 10)
    # Warm every worker's horse first: a fresh one is slower to send its first request, which would
    # blur the arrivals' spacing by more than the limit's margin on a loaded machine.
    warm = producer.enqueue(conn, _scrapes(site, DOMAINS[2], 20, limit_key="warm"), "queue_one")
    assert len(list(batches.follow(conn, warm.batch_id, timeout=60))) == 20
    site.order.clear()
    site.arrivals[DOMAINS[2]].clear()
    batch = producer.enqueue(conn, limited + unlimited, "queue_one")
    ends = list(batches.follow(conn, batch.batch_id, timeout=90))
    assert len(ends) == 44 and {end.outcome for end in ends} == {"finished"}, [e.detail for e in ends][:3]
    for domain in DOMAINS[:2]:
        assert len(site.arrivals[domain]) == 12
        assert _most_in_one_second(site.arrivals[domain]) <= 2, (site.arrivals[domain], _starts(conn, batch, domain))
    # No head-of-line blocking: the unlimited domain's jobs, enqueued behind the held ones, all
    # reached the site before the last request of either limited domain.
    last_unlimited = max(i for i, d in enumerate(site.order) if d == DOMAINS[2])
    for domain in DOMAINS[:2]:
        assert last_unlimited < max(i for i, d in enumerate(site.order) if d == domain)
    assert not conn.keys(limits.PREFIX + "held:*")


@pytest.mark.slow
def test_concurrency_holds_and_a_killed_workers_slot_comes_back(
    conn: redis.Redis, processes: Processes, site: Site
) -> None:
    site.delay = 1.0
    limits.set_rule(conn, limits.make_rule("domain:*", concurrency=3))
    consumer = start_consumer(processes, conn, 6)
    batch = producer.enqueue(conn, _scrapes(site, DOMAINS[0], 12), "queue_one")
    wait_for(lambda: site.in_flight[DOMAINS[0]] >= 1, 20, "a request in flight")
    busy = wait_for(lambda: [w for w in workers(conn) if w.get_current_job_id()], 20, "a busy worker")
    os.kill(busy[0].pid, signal.SIGKILL)  # mid-request: its horse dies with it, its lease must come back
    ends = list(batches.follow(conn, batch.batch_id, timeout=60))  # a leaked lease would last 90 s
    assert [end.outcome for end in ends].count("finished") == 12, [e.detail for e in ends]
    assert site.most[DOMAINS[0]] <= 3
    assert len(site.arrivals[DOMAINS[0]]) >= 12
    assert consumer.poll() is None
    leases = limits.leases_key(f"domain:{DOMAINS[0]}")  # the dead run's too, once its grace is over
    wait_for(lambda: conn.zcount(leases, time.time(), "+inf") == 0, 15, "every slot free")


def test_held_jobs_are_counted_as_waiting_shown_and_cancellable(conn: redis.Redis, processes: Processes) -> None:
    limits.set_rule(conn, limits.make_rule("slow:one", concurrency=1))
    start_consumer(processes, conn, 3)
    calls = [producer.TaskCall.build("sleep", {"seconds": 60}, limit_key="slow:one")] * 3
    batch = producer.enqueue(conn, calls, "queue_one")
    queue_key = Queue("queue_one", connection=conn, serializer=SERIALIZER).key
    wait_for(lambda: limits.held_total(conn, queue_key) == 2, 20, "two held jobs")
    assert not batches.summary(conn, batch.batch_id).done
    stats = run_cli("producer_main.py", "--stats", env=cli_env())
    assert "2 held by limits" in stats.stdout, stats.stdout
    listed = _workqueue("limit", "list")
    assert "slow:one" in listed.stdout and "1/1" in listed.stdout, listed.stdout
    held_ids = [job.id for job in batch.jobs if conn.hget(job.key, "status") == b"queued"]
    assert len(held_ids) == 2 and sorted(limits.held_ids(conn, queue_key)) == sorted(held_ids)
    killed = run_cli("kill_thread/kill_job.py", held_ids[0], env=cli_env())
    assert killed.returncode == 0, killed.stderr
    assert limits.held_ids(conn, queue_key) == [held_ids[1]]
    assert control.cancel_queued(conn, "queue_one", by="test")[0].message.startswith(f"job {held_ids[1]} cancelled")
    assert limits.held_total(conn, queue_key) == 0
    (running,) = [job.id for job in batch.jobs if job.id not in held_ids]
    assert control.stop_job(conn, running, by="test").found
    ends = list(batches.follow(conn, batch.batch_id, timeout=30))
    assert sorted(end.outcome for end in ends) == ["failed", "failed", "failed"]
    assert conn.zcount(limits.leases_key("slow:one"), time.time(), "+inf") == 0  # the stopped job's slot


def _workqueue(*args: str):
    import subprocess
    import sys

    from tests.helpers import ROOT

    return subprocess.run([sys.executable, "-m", "workqueue", *args], cwd=ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=60)  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["set", "domain:*", "--rate", "2/x"], "rate '2/x': expected N/s, N/m or N/h"),
        (["set", "domain:*", "--rate", "0/s"], "rate '0/s': must allow at least 1 request"),
        (["set", "domain:*", "--concurrency", "0"], "concurrency 0: must be at least 1"),
        (["set", "domain:*", "--concurrency", "-2"], "concurrency -2: must be at least 1"),
        (["set", "domain:*"], "give --rate N/s|N/m, --concurrency N or both"),
        (["remove", "domain:nothing"], "no limit on 'domain:nothing'"),
    ],
)
def test_bad_limits_are_one_line_and_exit_2(conn: redis.Redis, args: list[str], message: str) -> None:
    done = _workqueue("limit", *args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
    assert not conn.exists(limits.RULES_KEY)


def test_set_list_remove(conn: redis.Redis) -> None:
    assert _workqueue("limit", "set", "domain:*", "--rate", "2/s", "--concurrency", "4").returncode == 0
    assert _workqueue("limit", "set", "api:x", "--rate", "30/m").returncode == 0
    listed = _workqueue("limit", "list").stdout
    assert "pattern  domain:*: rate 2/s, concurrency 4" in listed and "key      api:x: rate 30/m" in listed
    assert _workqueue("limit", "remove", "api:x").returncode == 0
    assert [r.pattern for r in limits.rules(conn)] == ["domain:*"]


def test_the_rule_that_applies() -> None:
    rules = [limits.make_rule("domain:*", "2/s"), limits.make_rule("domain:*.org", "1/s"),
             limits.make_rule("domain:a.org", concurrency=1), limits.make_rule("k[!0-9]", "5/m")]  # fmt: skip
    assert limits.rule_for(rules, "domain:a.org").pattern == "domain:a.org"
    assert limits.rule_for(rules, "domain:b.org").pattern == "domain:*.org"
    assert limits.rule_for(rules, "domain:b.com").pattern == "domain:*"
    assert limits.rule_for(rules, "kx").pattern == "k[!0-9]" and limits.rule_for(rules, "k1") is None
    assert limits.glob_to_lua("domain:*.org") == "^domain%:.*%.org$"


def test_the_gateway_lists_sets_and_removes_limits_and_takes_a_limit_key(conn: redis.Redis) -> None:
    from workqueue.gateway import create_app

    client = create_app(conn).test_client()
    refused = client.post("/limits", json={"key": "domain:*", "rate": "2/x"})
    assert refused.status_code == 422 and refused.json["field"] == "rate"
    assert client.post("/limits", json={"key": "domain:*", "concurrency": 0}).status_code == 422
    assert client.post("/limits", json={"key": "domain:*"}).status_code == 422
    done = client.post("/limits", json={"key": "domain:*", "rate": "2/s", "concurrency": 4})
    assert done.status_code == 200, done.json
    assert client.get("/limits").json["rules"] == [{"key": "domain:*", "rate": "2/s", "concurrency": 4}]
    sent = client.post("/jobs", json={"task": "sleep", "params": {"seconds": 1}, "limit_key": "api:x"})
    assert sent.status_code == 201, sent.json
    assert conn.hget(f"rq:job:{sent.json['job_ids'][0]}", "limit_key") == b"api:x"
    bad = client.post("/jobs", json={"task": "sleep", "params": {"seconds": 1}, "limit_key": "a b"})
    assert bad.status_code == 422 and bad.json["field"] == "limit_key"
    assert client.delete("/limits/domain:*").status_code == 200
    assert client.delete("/limits/domain:*").status_code == 404


def test_scrape_carries_its_domain_and_an_enqueue_may_name_another_key(conn: redis.Redis) -> None:
    import workqueue

    batch = workqueue.enqueue("scrape", {"url": "https://Example.COM:8443/a"}, count=2)
    assert {conn.hget(f"rq:job:{i}", "limit_key") for i in batch.job_ids} == {b"domain:example.com"}
    other = workqueue.enqueue("scrape", {"url": "https://example.com/"}, limit_key="mirror:1")
    assert conn.hget(f"rq:job:{other.job_ids[0]}", "limit_key") == b"mirror:1"
    plain = workqueue.enqueue("sleep", {"seconds": 1})
    assert conn.hget(f"rq:job:{plain.job_ids[0]}", "limit_key") is None
    bad = run_cli("producer_main.py", "--task", "sleep", "--limit-key", "a*b", env=cli_env())
    assert bad.returncode == 2 and "invalid limit key 'a*b'" in bad.stderr and bad.stderr.count("\n") == 1
    rule = workqueue.set_limit("domain:*", rate="1/m")
    assert workqueue.list_limits()[0] == [rule]
    workqueue.remove_limit("domain:*")


def test_the_dashboard_shows_and_edits_limits_and_metrics_count_waiting_jobs(redis_url: str, conn: redis.Redis) -> None:
    from tests.helpers import client_for, token

    client = client_for(redis_url)
    csrf = token(client)
    assert client.post("/limits", data={"key": "domain:*", "rate": "2/s"}).status_code == 400  # no CSRF token
    refused = client.post("/limits", data={"csrf_token": csrf, "key": "domain:*", "rate": "2/x"})
    assert refused.status_code == 422 and "expected N/s, N/m or N/h" in refused.text
    done = client.post("/limits", data={"csrf_token": csrf, "key": "slow:<b>", "concurrency": "1"})
    assert done.status_code == 422  # not a key: refused, and shown as text
    assert "&lt;b&gt;" in done.text and "<b>" not in done.text.split('id="limit-error"')[1].split("</div>")[0]
    done = client.post("/limits", data={"csrf_token": csrf, "key": "slow:one", "concurrency": "1"})
    assert done.status_code == 303
    # Two jobs of the key: one starts (by a worker's claim), the other is held.
    from workqueue.worker import job_steps
    from workqueue.worker.catalogue_worker import CatalogueWorker

    calls = [producer.TaskCall.build("sleep", {"seconds": 30}, limit_key="slow:one")] * 2
    producer.enqueue(conn, calls, "queue_one")
    worker = CatalogueWorker(["queue_one"], connection=conn, name="limits-test")
    queue = Queue("queue_one", connection=conn, serializer=SERIALIZER)
    assert job_steps.claim(worker, [queue]).execution is not None
    assert job_steps.claim(worker, [queue]).job is None  # the second is held, off the queue
    page = client.get("/limits")
    assert page.status_code == 200 and 'data-key="slow:one"' in page.text
    row = page.text.split('data-key="slow:one"')[1].split("</tr>")[0]
    assert '<td class="wq-slots">1 / 1</td>' in row and '<td class="wq-waiting">1</td>' in row
    metrics = client.get("/metrics").text
    assert 'workqueue_limit_waiting_jobs{key="slow:one"} 1.0' in metrics
    assert 'workqueue_limit_slots_in_use{key="slow:one"} 1.0' in metrics
    removed = client.post("/limits/remove", data={"csrf_token": csrf, "key": "slow:one"})
    assert removed.status_code == 303 and limits.rules(conn) == []
    assert client_for(redis_url, read_only=True).post("/limits", data={"key": "a", "rate": "1/s"}).status_code == 403


def test_a_heartbeat_extends_a_live_lease_only(conn: redis.Redis) -> None:
    conn.zadd(limits.leases_key("k"), {"job:run": time.time() + 5})
    with conn.pipeline() as pipe:  # a transaction, as the worker's heartbeat sends it
        limits.queue_extend(pipe, "k", "job", "run", 100)
        limits.queue_extend(pipe, "k", "job", "ended", 100)
        pipe.execute()
    assert conn.zscore(limits.leases_key("k"), "job:run") > time.time() + 90
    assert conn.zscore(limits.leases_key("k"), "job:ended") is None


def test_a_burst_consumer_waits_for_held_jobs_before_it_exits(conn: redis.Redis, processes: Processes) -> None:
    limits.set_rule(conn, limits.make_rule("paced", "1/s"))
    calls = [producer.TaskCall.build("primes", {"n": 0}, limit_key="paced")] * 3
    batch = producer.enqueue(conn, calls, "queue_one")
    consumer = processes.start("consumer_main.py", "--workers", "2", "--queue", "queue_one", "--burst")
    assert consumer.wait(60) == 0
    assert batches.summary(conn, batch.batch_id).finished == 3


def test_a_horse_reads_the_rules_for_its_pacing_once_per_interval_not_once_per_job(
    conn: redis.Redis, processes: Processes, site: Site
) -> None:
    limits.set_rule(conn, limits.make_rule("elsewhere:*", "100/s"))  # a rule, of another key
    start_consumer(processes, conn, 1)
    before = conn.config_get("slowlog-*")
    conn.config_set("slowlog-log-slower-than", 0)
    conn.config_set("slowlog-max-len", 10_000)
    conn.slowlog_reset()
    try:
        batch = producer.enqueue(conn, _scrapes(site, DOMAINS[0], 30), "queue_one")
        ends = list(batches.follow(conn, batch.batch_id, timeout=60))
        entries = conn.slowlog_get(10_000)
    finally:
        conn.config_set("slowlog-log-slower-than", before["slowlog-log-slower-than"])
        conn.config_set("slowlog-max-len", before["slowlog-max-len"])
    assert [end.outcome for end in ends] == ["finished"] * 30, [e.detail for e in ends][:3]
    reads = sum(1 for e in entries if e["command"] == f"HGETALL {limits.RULES_KEY}".encode())
    jobs = [Job.fetch(job.id, connection=conn, serializer=SERIALIZER) for job in batch.jobs]
    ran = max(job.ended_at for job in jobs) - min(job.started_at for job in jobs)
    # One read per LIMIT_RULES_FRESH of the run at most, plus the first (before: one per job, 30).
    assert 1 <= reads <= 2 + ran.total_seconds() / LIMIT_RULES_FRESH, (reads, ran)
