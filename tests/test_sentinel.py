"""Redis behind Sentinel: ``redis+sentinel://`` URLs everywhere, and a failover mid-batch.

A master, a replica and three sentinels (``tests/sentinel_setup.py``, Debian's redis-server run as a
sentinel; ``make test`` installs it when root). The master is SIGKILLed while a batch runs: the
workers, ``producer --wait``, the dashboard and the gateway follow the new master and carry on,
and the batch ends. What asynchronous replication lost (jobs the old master acknowledged that the
new one never had) is counted and printed, and ``--durable`` jobs must all survive.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import pytest
import redis

from tests.helpers import Processes, cli_env, free_port, get, run_cli, wait_for, workers
from tests.sentinel_setup import SentinelSetup, sentinel_command
from workqueue import api, producer
from workqueue.connection import client_from_url, connect, mask_url
from workqueue.errors import NotDurable, WorkqueueError
from workqueue.gateway import create_app as create_gateway

NO_SENTINEL = "needs Debian's redis-server (run as a sentinel) or redis-sentinel: `make test` installs it as root"
needs_sentinel = pytest.mark.skipif(sentinel_command() is None, reason=NO_SENTINEL)
TOKEN = "sentinel-test-token-0123456789"


@pytest.fixture
def sentinels():
    setup = SentinelSetup()
    try:
        setup.wait_ready()
        yield setup
    finally:
        setup.stop()


def test_a_sentinel_url_is_read_and_never_shows_its_password() -> None:
    url = "redis+sentinel://:s3cret@h1:26379,h2:26380/mymaster/2"
    assert mask_url(url) == "redis+sentinel://:***@h1:26379,h2:26380/mymaster/2"
    client = client_from_url(url)
    assert client.connection_pool.service_name == "mymaster"
    assert client.connection_pool.connection_kwargs["db"] == 2
    assert client.connection_pool.sentinel_manager.sentinels[1].connection_pool.connection_kwargs["port"] == 26380


def test_a_sentinel_url_without_its_service_or_sentinels_is_one_line() -> None:
    no_service = run_cli("producer_main.py", "--stats", "--redis-url", "redis+sentinel://127.0.0.1:1")
    assert no_service.returncode == 2, no_service.stderr
    assert "names its master's service" in no_service.stderr and len(no_service.stderr.strip().splitlines()) == 1
    port = free_port()
    away = run_cli("producer_main.py", "--stats", env=cli_env(REDIS_URL=f"redis+sentinel://:pw9@127.0.0.1:{port}/m"))
    assert away.returncode == 1, away.stderr
    assert "cannot reach Redis at redis+sentinel://:***@" in away.stderr and "pw9" not in away.stderr
    assert len(away.stderr.strip().splitlines()) == 1


@needs_sentinel
@pytest.mark.slow
def test_durable_fails_without_a_replica_in_one_line(redis_url: str) -> None:
    """The session's Redis has no replica: ``--durable`` enqueues, then says nobody vouches for it."""
    result = run_cli(
        "producer_main.py", "--task", "sleep", "--param", "seconds=1", "--durable", "--redis-url", redis_url
    )
    assert result.returncode == 1, result.stderr
    assert "no replica acknowledged" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    connection, _ = connect(redis_url)
    with pytest.raises(NotDurable):
        api.enqueue("sleep", {"seconds": 1}, queue="q", durable=True, redis_url=redis_url)
    gateway = create_gateway(connection).test_client()
    answer = gateway.post("/jobs", json={"task": "sleep", "queue": "q", "durable": True})
    assert answer.status_code == 503 and answer.get_json()["field"] == "durable", answer.get_json()
    assert "no replica acknowledged" in answer.get_json()["error"]
    assert gateway.post("/jobs", json={"task": "sleep", "durable": "yes"}).status_code == 422
    assert gateway.post("/jobs", json={"task": "sleep", "durable": False}).status_code == 201


class Acknowledged:
    """Enqueues one job at a time on ``queue`` (nobody works it) until stopped, riding the failover,
    and keeps the ids of those Redis acknowledged: afterwards, those missing were lost."""

    def __init__(self, url: str, queue: str, durable: bool) -> None:
        self.connection, _ = connect(url)
        self.queue, self.durable = queue, durable
        self.ids: list[str] = []
        self.refused = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        call = producer.TaskCall.build("sleep", {"seconds": 1})
        while not self.stop.is_set():
            try:
                submission = producer.enqueue(self.connection, [call], self.queue, durable=self.durable)
            except (redis.RedisError, WorkqueueError, OSError):  # refused, not durable, or Redis away
                self.refused += 1
                time.sleep(0.05)
                continue
            self.ids.append(submission.jobs[0].id)
            time.sleep(0.005)

    def missing(self, connection: redis.Redis) -> list[str]:
        self.stop.set()
        self.thread.join(30)
        with connection.pipeline(transaction=False) as pipe:
            for job_id in self.ids:
                pipe.exists(f"rq:job:{job_id}")
            found = pipe.execute()
        return [job_id for job_id, there in zip(self.ids, found, strict=True) if not there]


def _live(port: int) -> bool:
    try:
        return get(f"http://127.0.0.1:{port}/api/live")[0] == 200
    except OSError:
        return False


def _post(url: str, body: dict) -> int:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


@needs_sentinel
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_everything_follows_a_failover_mid_batch(
    sentinels: SentinelSetup, processes: Processes, capsys: pytest.CaptureFixture
) -> None:
    env = cli_env(REDIS_URL=sentinels.url, WORKQUEUE_GATEWAY_TOKEN=TOKEN)
    dash_port, gate_port = free_port(), free_port()
    processes.start("dashboard_main.py", "--port", str(dash_port), env=env)
    processes.start("gateway_main.py", "--port", str(gate_port), env=env)
    consumer = processes.start("consumer_main.py", "--workers", "3", "--queue", "queue_one", "--queue", "gw", env=env)
    master = sentinels.client(sentinels.master)
    wait_for(lambda: len(workers(master)) == 3, 30, "3 workers")
    wait_for(lambda: _live(dash_port), 30, "the dashboard")
    wait_for(lambda: _post(f"http://127.0.0.1:{gate_port}/jobs", {"task": "pi", "queue": "gw"}) == 201, 30, "gateway")
    batch = processes.start(
        "producer_main.py", "--task", "sleep", "--param", "seconds=1", "--count", "30", "--wait",
        "--redis-url", sentinels.url, env=env,
    )  # fmt: skip
    plain = Acknowledged(sentinels.url, "acked", durable=False)
    durable = Acknowledged(sentinels.url, "durable", durable=True)
    wait_for(lambda: "enqueued 30" in batch.output()[0], 60, "the batch to be enqueued")
    wait_for(lambda: master.llen("rq:queue:queue_one") <= 24, 60, "the batch to be under way")
    killed_at = time.time()
    sentinels.kill_master()
    sentinels.wait_failover()
    new_master = sentinels.client(sentinels.replica)

    # The dashboard and the gateway answer from the new master, the gateway's job runs there.
    wait_for(lambda: _live(dash_port), 60, "the dashboard after failover")
    wait_for(lambda: _post(f"http://127.0.0.1:{gate_port}/jobs", {"task": "pi", "queue": "gw"}) == 201, 60, "gateway")
    # `producer --wait` sees the batch end, every job finished.
    batch.wait(240)
    out, err = batch.output()
    assert batch.returncode == 0, (out[-2000:], err[-2000:])
    assert "30 finished" in out or "finished 30" in out or "30/30" in out, out[-1000:]

    # The workers heartbeat on the new master, and still hear commands (pubsub): a graceful stop.
    def beating() -> bool:
        found = workers(new_master)
        if len(found) != 3 or not all(w.last_heartbeat.timestamp() > killed_at + 1 for w in found):
            return False
        # Each listens on its command channel again (RQ's pubsub thread resubscribes after its retry).
        listening = new_master.pubsub_numsub(*[w.pubsub_channel_name for w in found])
        return all(count == 1 for _channel, count in listening)

    wait_for(beating, 60, "the 3 workers to heartbeat on, and listen to, the new master")
    wait_for(lambda: new_master.llen("rq:queue:gw") == 0, 60, "the gateway's job to be taken")
    stopped = run_cli("kill_thread/kill_workers.py", "--all", env=env)
    assert stopped.returncode == 0, stopped.stderr
    consumer.wait(60)
    assert consumer.returncode == 0

    lost, lost_durable = plain.missing(new_master), durable.missing(new_master)
    assert durable.ids, "no --durable enqueue was acknowledged at all"
    assert lost_durable == [], f"{len(lost_durable)} --durable jobs were lost"
    with capsys.disabled():
        print(
            f"\nSentinel failover: asynchronous replication lost {len(lost)} of {len(plain.ids)} acknowledged jobs; "
            f"--durable lost {len(lost_durable)} of {len(durable.ids)}"
        )


@needs_sentinel
@pytest.mark.slow
def test_a_kept_connection_follows_a_demoted_master(sentinels: SentinelSetup) -> None:
    """``SENTINEL FAILOVER``: the old master lives on as a replica and answers writes READONLY. A
    worker's kept connection (a single-connection client, as a job's writes use) takes that as an
    outage, asks the sentinels again and writes to the new master."""
    connection, _ = connect(sentinels.url, ride_out_outages=True)
    kept = redis.Redis(connection_pool=connection.connection_pool, single_connection_client=True)
    assert kept.incr("counter") == 1
    # On the replica before it is promoted: replication is asynchronous, and a write the failover loses
    # (as the --durable test shows it can) would make the new master's count start again at 1.
    assert kept.wait(1, 10_000) == 1
    wait_for(lambda: _failover_started(sentinels), 30, "a sentinel to accept SENTINEL FAILOVER")
    sentinels.wait_failover()
    wait_for(lambda: sentinels.client(sentinels.master).info("replication")["role"] == "slave", 30, "the demotion")
    assert kept.incr("counter") == 2
    assert sentinels.client(sentinels.replica).get("counter") == b"2"


def _failover_started(sentinels: SentinelSetup) -> bool:
    """Ask for a failover; a sentinel that has not yet judged the replica fit (its INFO of the
    replica is refreshed every 10 s, later on a loaded machine) answers NOGOODSLAVE: ask again."""
    try:
        return bool(redis.Redis(port=sentinels.sentinels[0], socket_timeout=2).sentinel_failover("mymaster"))
    except redis.ResponseError as exc:
        if "NOGOODSLAVE" not in str(exc):
            raise
        return False
