"""More than one machine, for real: hosts made of network namespaces (tests/netns.py), Redis on one,
a consumer of 2 workers on each of three others, the producer on a fifth, kill_workers on a sixth.
A host cut off (its link down) longer than the registration lapse has its jobs handed back and
finished elsewhere, and once back neither counts them again nor leaves anything "started"; a
shorter cut re-runs nothing; kill_workers --queue from another host stops every host's workers.
Root only (skipped otherwise, saying why)."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis
from rq import Queue, Worker
from rq.job import Job

from tests.helpers import wait_for
from tests.netns import Host, Network, unavailable
from workqueue import batches, jobstats, producer
from workqueue.jobs import SERIALIZER
from workqueue.settings import HEARTBEAT_TTL

pytestmark = [pytest.mark.slow, pytest.mark.skipif(unavailable() is not None, reason=unavailable() or "")]

QUEUE = "hosts"
CONSUMER_HOSTS = ("host-a", "host-b", "host-c")
REDIS_BIN = "/usr/bin/redis-server"


@dataclass
class Cluster:
    network: Network
    redis_host: Host
    consumers: dict[str, Host]
    consumer_processes: dict[str, subprocess.Popen]
    producer: Host
    ops: Host
    url: str
    conn: redis.Redis

    def produce(self, seconds: float, count: int) -> tuple[subprocess.Popen, str]:
        """``producer_main.py --wait`` on the producer host, in the background; it and its batch id."""
        process = self.producer.python(
            "producer_main.py", "--task", "sleep", "--param", f"seconds={seconds}", "--count", str(count),
            "--queue", QUEUE, "--wait", "--quiet",
        )  # fmt: skip
        found = wait_for(lambda: re.search(r"batch (\w+): enqueued", _read(process)), 30, "the producer to enqueue")
        return process, found.group(1)

    def jobs(self, batch_id: str) -> list[Job]:
        ids = [job_id for job_id, _ in batches.job_statuses(self.conn, batch_id)]
        return Job.fetch_many(ids, connection=self.conn, serializer=SERIALIZER)

    def host_of(self, worker_name: str | None) -> str:
        """The host a worker runs on: its name starts with its hostname (``<host>.<pid>.w<n>``)."""
        return (worker_name or "").split(".", 1)[0]

    def running_on(self, batch_id: str) -> dict[str, str]:
        """Each started job of the batch and the host running it."""
        return {j.id: self.host_of(j.worker_name) for j in self.jobs(batch_id) if j.get_status() == "started"}


def _read(process: subprocess.Popen) -> str:
    with open(process.log) as f:  # type: ignore[attr-defined]
        return f.read()


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    network = Network()
    try:
        redis_host = network.add_host("redis")
        consumers = {name: network.add_host(name) for name in CONSUMER_HOSTS}
        producer, ops = network.add_host("producer"), network.add_host("ops")
        data = network.dir / "redis-data"
        data.mkdir()
        redis_host.start(
            REDIS_BIN, "--port", "6379", "--bind", redis_host.address, "--protected-mode", "no",
            "--save", "", "--appendonly", "no", "--dir", str(data),
        )  # fmt: skip
        url = f"redis://{redis_host.address}:6379/0"
        monkeypatch.setenv("REDIS_URL", url)  # the hosts' processes inherit it
        conn = redis.Redis.from_url(url, socket_timeout=5)
        wait_for(lambda: _pings(conn), 15, "Redis on its host")
        started = {
            name: host.python("consumer_main.py", "--workers", "2", "--queue", QUEUE, "--verbose")
            for name, host in consumers.items()
        }
        wait_for(lambda: len(Worker.all(connection=conn)) == 6, 30, "6 workers on 3 hosts")
        assert {w.name.split(".")[0] for w in Worker.all(connection=conn)} == set(CONSUMER_HOSTS)
        yield Cluster(network, redis_host, consumers, started, producer, ops, url, conn)
    finally:
        network.remove()


def _pings(conn: redis.Redis) -> bool:
    try:
        return bool(conn.ping())
    except redis.ConnectionError:
        return False


def _finished(process: subprocess.Popen, total: int) -> None:
    """The producer's --wait ends with every task finished, each counted once."""
    process.wait(90)
    out = _read(process)
    assert process.returncode == 0, out
    assert re.search(rf"finished {total}, failed 0 of {total}", out), out


def _counted_once(cluster: Cluster, batch_id: str, total: int) -> None:
    """The batch, the statistics and the registries count each task once, and nothing is left started."""
    conn = cluster.conn
    summary = batches.summary(conn, batch_id)
    assert (summary.total, summary.finished, summary.failed, summary.done) == (total, total, 0, True)
    events = conn.xrange(batches.events_key(batch_id))
    ends = [e for _, e in events if b"job" in e]
    assert len(ends) == total and len({e[b"job"] for e in ends}) == total
    assert not [e for e in ends if e.get(b"redelivery")], "a job's end was reported twice"
    assert [j.get_status() for j in cluster.jobs(batch_id)] == ["finished"] * total
    queue = Queue(QUEUE, connection=conn, serializer=SERIALIZER)
    assert queue.started_job_registry.count == 0 and conn.zcard(queue.started_job_registry.key) == 0
    assert len(queue.finished_job_registry) == total and queue.count == 0

    def stats() -> jobstats.QueueStats:
        return {s.queue: s for s in jobstats.collect(conn, [QUEUE])}[QUEUE]

    # the statistics are written by each worker's horse about once a second (tallies.Tally)
    wait_for(lambda: "sleep" in stats().tasks and stats().tasks["sleep"].finished >= total, 10, "the statistics")
    assert stats().tasks["sleep"].finished == total and stats().running == 0


def test_a_batch_spreads_over_the_three_hosts(cluster: Cluster) -> None:
    process, batch_id = cluster.produce(1, 12)
    _finished(process, 12)
    hosts = {cluster.host_of(job.worker_name) for job in cluster.jobs(batch_id)}
    assert hosts == set(CONSUMER_HOSTS)
    _counted_once(cluster, batch_id, 12)


def test_a_host_cut_off_longer_than_the_lapse_has_its_jobs_finished_elsewhere_once(cluster: Cluster) -> None:
    # 4 long jobs on 6 workers: the host cut off holds k of them, and the others have exactly k idle
    # workers to take them back.
    process, batch_id = cluster.produce(40, 4)
    running = wait_for(lambda: len(r := cluster.running_on(batch_id)) == 4 and r, 30, "4 jobs to start")
    victim = next(iter(running.values()))
    cut_jobs = sorted(job_id for job_id, host in running.items() if host == victim)
    cluster.consumers[victim].cut()
    cut_at = time.monotonic()

    def rerun_elsewhere() -> bool:
        now = cluster.running_on(batch_id)
        return all(now.get(job_id) not in (None, victim) for job_id in cut_jobs)

    # Handed back once the cut-off workers' registrations lapse (HEARTBEAT_TTL), at the next sweep.
    wait_for(rerun_elsewhere, HEARTBEAT_TTL + 10, "the cut-off host's jobs to run on another host")
    assert time.monotonic() - cut_at > HEARTBEAT_TTL - 4  # not before its registration lapsed
    for job_id in cut_jobs:
        job = Job.fetch(job_id, connection=cluster.conn, serializer=SERIALIZER)
        assert "heartbeat expired" in job.meta["interruptions"][0]["reason"]
    cluster.consumers[victim].reconnect()  # while its own runs of those jobs still sleep

    # Back, the cut-off workers learn that their runs were handed back: each is stopped (long before
    # its 40 s sleep is over) and writes only a note, never an end.
    def superseded() -> bool:
        jobs = [Job.fetch(j, connection=cluster.conn, serializer=SERIALIZER) for j in cut_jobs]
        return all(job.meta.get("superseded") for job in jobs)

    wait_for(superseded, 40, "the cut-off runs to be stopped, superseded")
    _finished(process, 4)
    for job_id in cut_jobs:
        job = Job.fetch(job_id, connection=cluster.conn, serializer=SERIALIZER)
        assert cluster.host_of(job.worker_name) != victim
        assert [cluster.host_of(note["worker"]) for note in job.meta["superseded"]] == [victim]
        assert job.meta["superseded"][0]["outcome"].startswith("stopped"), job.meta["superseded"]
    _counted_once(cluster, batch_id, 4)
    # The cut-off workers learnt that they had been declared dead, and work on, registered again.
    out = _read(cluster.consumer_processes[victim])
    assert "declared dead" in out, out
    wait_for(
        lambda: sum(w.name.startswith(victim + ".") for w in Worker.all(connection=cluster.conn)) == 2,
        15,
        "the cut-off host's workers to be registered again",
    )
    for worker in Worker.all(connection=cluster.conn):
        assert not cluster.conn.smembers(f"rq:executions:{worker.name}"), f"{worker.name} holds a stale run"
    # And they take work again.
    process, batch_id = cluster.produce(1, 12)
    _finished(process, 12)
    assert {cluster.host_of(job.worker_name) for job in cluster.jobs(batch_id)} == set(CONSUMER_HOSTS)


def test_a_cut_shorter_than_the_lapse_reruns_nothing(cluster: Cluster) -> None:
    process, batch_id = cluster.produce(8, 4)
    running = wait_for(lambda: len(r := cluster.running_on(batch_id)) == 4 and r, 30, "4 jobs to start")
    victim = next(iter(running.values()))
    cluster.consumers[victim].cut()
    # Well under the lapse: a heartbeat sent during the cut arrives at TCP's next retransmission,
    # which backs off (0.2, 0.6, 1.4, 3 s after sending), so 2 s of cut stay under 7 s of silence.
    time.sleep(2)
    cluster.consumers[victim].reconnect()
    _finished(process, 4)
    for job in cluster.jobs(batch_id):
        assert "interruptions" not in job.meta and "superseded" not in job.meta
        assert cluster.host_of(job.worker_name) == running[job.id]
    _counted_once(cluster, batch_id, 4)
    assert "declared dead" not in _read(cluster.consumer_processes[victim])


def test_kill_workers_from_another_host_stops_the_workers_of_every_host(cluster: Cluster) -> None:
    # --host: one host's workers only (what a Kubernetes pod's preStop hook runs to drain itself).
    result = cluster.ops.run("kill_thread/kill_workers.py", "--host", "host-a")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" stopped") == 2 and "host-a." in result.stdout, result.stdout
    assert cluster.consumer_processes["host-a"].wait(30) == 0
    assert {w.name.split(".")[0] for w in Worker.all(connection=cluster.conn)} == {"host-b", "host-c"}
    result = cluster.ops.run("kill_thread/kill_workers.py", "--host", "host-z")
    assert result.returncode == 2 and "hosts with workers: host-b, host-c" in result.stderr, result.stderr

    result = cluster.ops.run("kill_thread/kill_workers.py", "--queue", QUEUE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" stopped") == 4, result.stdout
    for name, consumer in cluster.consumer_processes.items():
        consumer.wait(30)
        out = _read(consumer)
        assert consumer.returncode == 0, f"{name}: {out}"
        assert "stopped by kill_workers" in out
    assert Worker.all(connection=cluster.conn) == []


def _blocked_from(conn: redis.Redis, address: str) -> bool:
    """Whether Redis holds a client of ``address`` blocked in a BLMOVE (it cannot tell a cut link)."""
    return any(
        c["addr"].rsplit(":", 1)[0] == address and c["cmd"] == "blmove" and "b" in c["flags"]
        for c in conn.client_list()
    )


def test_a_job_redis_handed_to_a_worker_as_its_host_was_cut_off_runs_once(cluster: Cluster) -> None:
    """Redis answers a waiting worker's BLMOVE with a job just as its host is cut off, and runs the
    claim the worker sent with it: the job is started for a worker that never hears of it. The sweep
    hands it back once that worker's heartbeats have lapsed, another host runs it. When the link comes
    back, the worker must not start the job again (its connection gave up on the answer long before)."""
    victim = cluster.consumers["host-a"]
    cluster.consumer_processes["host-a"].terminate()  # host-a's only waiting worker is then solo's
    assert cluster.consumer_processes["host-a"].wait(30) == 0
    victim.python("consumer_main.py", "--workers", "1", "--queue", "solo", "--verbose")
    solo = Queue("solo", connection=cluster.conn, serializer=SERIALIZER)
    for _ in range(10):  # cut while Redis counts its worker as waiting in a BLMOVE
        wait_for(lambda: _blocked_from(cluster.conn, victim.address), 30, "host-a's worker to wait on solo")
        victim.cut()
        if _blocked_from(cluster.conn, victim.address):
            break
        victim.reconnect()
    else:
        pytest.fail("never caught host-a's worker waiting in a BLMOVE")
    submission = producer.enqueue(cluster.conn, [producer.TaskCall.build("sleep", {"seconds": 1})], "solo")
    job = submission.jobs[0]
    # Redis answered host-a: the claim sent with its BLMOVE started the job for host-a's worker
    wait_for(lambda: job.get_status(refresh=True) == "started", 10, "the job to be started for host-a's worker")
    assert cluster.host_of(Job.fetch(job.id, connection=cluster.conn, serializer=SERIALIZER).worker_name) == "host-a"
    assert cluster.conn.llen(solo.intermediate_queue_key) == 0
    cluster.consumers["host-b"].python("consumer_main.py", "--workers", "1", "--queue", "solo")

    def done() -> Job | None:  # its status as read with its other fields (a refresh may see an end they missed)
        fetched = Job.fetch(job.id, connection=cluster.conn, serializer=SERIALIZER)
        return fetched if fetched.get_status(refresh=False) == "finished" else None

    try:
        finished = wait_for(done, 40, "the sweep to put the job back and host-b to run it")
    except AssertionError as exc:
        conn = cluster.conn
        state = {
            "status": conn.hget(job.key, "status"),
            "queue": conn.lrange(solo.key, 0, -1),
            "intermediate": conn.lrange(solo.intermediate_queue_key, 0, -1),
            "workers": sorted(w.name for w in Worker.all(connection=conn)),
            "logs": [_read(p) for h in cluster.network.hosts for p in h.processes if "solo" in str(p.args)],
        }
        raise AssertionError(f"{exc}: {state}") from None
    assert cluster.host_of(finished.worker_name) == "host-b"
    victim.reconnect()
    back = cluster.conn.time()[0]

    def beat_since_back() -> bool:
        names = [
            w for w in Worker.all(connection=cluster.conn) if w.name.startswith("host-a.") and "solo" in w.queue_names()
        ]
        return bool(names) and names[0].last_heartbeat.timestamp() > back + 4

    wait_for(beat_since_back, 60, "host-a's solo worker to heartbeat again, seconds after the link came back")
    again = Job.fetch(job.id, connection=cluster.conn, serializer=SERIALIZER)
    assert again.get_status() == "finished" and cluster.host_of(again.worker_name) == "host-b"
    assert again.ended_at == finished.ended_at, "the job ran a second time"  # one end, host-b's
    summary = batches.summary(cluster.conn, submission.batch_id)
    assert (summary.finished, summary.failed) == (1, 0), "the job's end was counted twice"
    assert cluster.conn.llen(solo.intermediate_queue_key) == 0 and solo.started_job_registry.count == 0
