"""The Python API's client: one per process and URL, checked once, one round trip per enqueue,
fork-safe, following the embedded server when it is stopped (issue 18: enqueue latency)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from pathlib import Path

import pytest

import workqueue
from tests.helpers import free_port, wait_for
from workqueue import embedded, outage
from workqueue.errors import RedisLostData
from workqueue.settings import Settings


def test_each_enqueue_after_the_first_is_one_round_trip_on_one_client(redis_url: str, conn, sends) -> None:
    first = workqueue.enqueue("sleep", {"seconds": 1}, queue="api", redis_url=redis_url)
    connections = conn.info("stats")["total_connections_received"]
    sends.clear()
    batches = [workqueue.enqueue("sleep", {"seconds": 1}, queue="api", redis_url=redis_url) for _ in range(3)]
    assert len(sends) == 3 and all(b"EVALSHA" in sent for sent in sends), sends
    assert conn.info("stats")["total_connections_received"] == connections  # no new connection, no check
    assert all(batch.connection is first.connection for batch in batches)
    assert conn.llen("rq:queue:api") == 4
    assert all(batch.mark is not None and batch.mark.id == conn.get(outage.MARK_KEY) for batch in batches)


def test_an_enqueue_is_one_script_call_of_few_commands_and_bytes(redis_url: str, conn, sends) -> None:
    """One EVALSHA (no MULTI ... EXEC of 23 commands and 2.7 KB, nor an EVAL sending a script's text):
    Redis counts at most 20 commands (INFO commandstats, the script's own included, and the idle
    bells' EXISTS) and reads under 1,700 bytes, for the same keys (tests/test_job_steps.py holds them)."""

    def counters() -> tuple[int, int]:
        stats = conn.info("commandstats")
        commands = sum(v["calls"] for k, v in stats.items() if k != "cmdstat_info")
        return commands, conn.info("stats")["total_net_input_bytes"]

    workqueue.enqueue("sleep", {"seconds": 1}, queue="api", redis_url=redis_url)  # the script is loaded
    commands, received = counters()
    sends.clear()
    workqueue.enqueue("sleep", {"seconds": 1}, queue="api", redis_url=redis_url)
    assert len(sends) == 1 and b"EVALSHA" in sends[0], sends
    commands_after, received_after = counters()
    assert commands_after - commands <= 20
    assert received_after - received < 1_700  # the two INFO requests included
    assert conn.llen("rq:queue:api") == 2


def test_enqueue_many_and_delayed_batches_are_one_round_trip_too(redis_url: str, conn, sends) -> None:
    # Both paths warmed, twice: the enqueue's goes on a connection this thread keeps, taken from the
    # pool at its second call; the delayed one's on a connection of the pool, opened again then.
    for _ in range(2):
        workqueue.enqueue("sleep", {"seconds": 1}, queue="api", redis_url=redis_url)
        workqueue.enqueue("sleep", {"seconds": 1}, delay=60, queue="api", redis_url=redis_url)
    sends.clear()
    many = workqueue.enqueue_many([("sleep", {"seconds": 1})] * 3, queue="api", redis_url=redis_url)
    later = workqueue.enqueue("sleep", {"seconds": 1}, delay=60, queue="api", redis_url=redis_url)
    assert len(sends) == 2, sends
    assert len(many.job_ids) == 3 and conn.zcard("rq:scheduled:api") == 3
    assert later.mark is not None and later.mark.id == conn.get(outage.MARK_KEY)


def test_an_enqueue_whose_kept_connection_the_server_closed_is_sent_once_on_a_new_one(
    redis_url: str, conn, sends
) -> None:
    url = f"{redis_url}?client_name=kept-by-this-test"  # a client (and a kept connection) of its own

    def ours() -> list[dict]:
        return [client for client in conn.client_list() if client["name"] == "kept-by-this-test"]

    workqueue.enqueue("sleep", {"seconds": 1}, queue="api", redis_url=url)
    for client in ours():
        conn.client_kill_filter(_id=client["id"])
    wait_for(lambda: not ours(), 10, "the server to close them")
    sends.clear()
    workqueue.enqueue("sleep", {"seconds": 1}, queue="api", redis_url=url)
    # the closed one found before sending on it: the script sent once, on a connection opened again
    assert len([sent for sent in sends if b"EVALSHA" in sent]) == 1, sends
    assert any(b"HELLO" in sent for sent in sends), sends
    assert conn.llen("rq:queue:api") == 2


def test_a_batch_whose_redis_lost_its_data_says_so(redis_url: str, conn) -> None:
    batch = workqueue.enqueue("sleep", {"seconds": 1}, queue="api", redis_url=redis_url)
    conn.flushall()
    with pytest.raises(RedisLostData):
        batch.wait(timeout=30)


def _child_enqueues(url: str, answer: multiprocessing.connection.Connection) -> None:
    batch = workqueue.enqueue("sleep", {"seconds": 1}, queue="api", redis_url=url)
    answer.send((batch.connection.client_id(), batch.job_ids[0]))


def test_a_forked_child_uses_connections_of_its_own(redis_url: str, conn) -> None:
    parent = workqueue.enqueue("sleep", {"seconds": 1}, queue="api", redis_url=redis_url)
    mine = parent.connection.client_id()
    context = multiprocessing.get_context("fork")
    receiving, sending = context.Pipe(duplex=False)
    child = context.Process(target=_child_enqueues, args=(redis_url, sending))
    child.start()
    try:
        assert receiving.poll(60), "the child did not answer"
        child_id, job_id = receiving.recv()
    finally:
        child.join(60)
    assert child.exitcode == 0 and child_id != mine
    assert conn.exists(f"rq:job:{job_id}")
    again = workqueue.enqueue("sleep", {"seconds": 1}, queue="api", redis_url=redis_url)
    assert again.connection is parent.connection and again.connection.client_id() == mine
    assert conn.llen("rq:queue:api") == 3


@pytest.fixture
def embedded_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """In-process calls with no URL: the embedded server, on a free port with its data under tmp_path."""
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("WORKQUEUE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WORKQUEUE_REDIS_PORT", str(free_port()))
    settings = Settings.from_env()
    yield settings
    embedded.stop(settings)


@pytest.mark.slow
def test_the_embedded_server_stopped_between_calls_is_started_again(embedded_default: Settings) -> None:
    first = workqueue.enqueue("sleep", {"seconds": 1}, queue="api")
    started = embedded.running_pid(embedded_default)
    assert started is not None
    assert embedded.stop(embedded_default)
    second = workqueue.enqueue("sleep", {"seconds": 1}, queue="api")
    assert embedded.running_pid(embedded_default) not in (None, started)
    assert second.connection is not first.connection
    assert second.connection.llen("rq:queue:api") == 2  # the append-only log kept the first


def test_an_enqueue_whose_unique_jobs_all_exist_registers_no_queue(redis_url: str, conn) -> None:
    first = workqueue.enqueue("sleep", {"seconds": 1}, queue="api", unique_key="only-one", redis_url=redis_url)
    again = workqueue.enqueue("sleep", {"seconds": 1}, queue="elsewhere", unique_key="only-one", redis_url=redis_url)
    assert again.job_ids == [] and again.existing == {0: first.job_ids[0]}
    assert conn.smembers("rq:queues") == {b"rq:queue:api"}
