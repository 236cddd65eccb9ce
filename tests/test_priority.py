"""Priorities inside a queue: higher levels first, first in first out within a level, taken in the
claim script; every reader of waiting jobs sees them; a dead worker's job goes back to its level."""

from __future__ import annotations

import pytest
from rq import Queue

from tests.helpers import fetch, run_cli, start_by_a_dead_worker, start_consumer, wait_for
from workqueue import control, pausing, priorities, producer, recovery
from workqueue.errors import BadInput
from workqueue.jobs import SERIALIZER


def _enqueue(conn, level, count=1, queue="prio", seconds=0.05):
    call = producer.TaskCall.build("sleep", {"seconds": seconds}, priority=level)
    return producer.enqueue(conn, [call] * count, queue).jobs


def test_one_worker_starts_higher_levels_first_and_each_level_in_order(conn, processes) -> None:
    pausing.pause(conn, "prio")  # everything waits until all is enqueued
    order = []
    for level in ("normal", "low", "urgent", 7, "normal", 0, "urgent", "high", 3):
        order += _enqueue(conn, level)
    normal = conn.llen(Queue("prio", connection=conn).key)
    assert normal == 2  # jobs without a level other than normal stay in RQ's own list
    assert Queue("prio", connection=conn).count == 9
    assert priorities.counts(conn, ["prio"])["prio"] == {9: 2, 7: 2, 5: 2, 3: 1, 2: 1, 0: 1}
    start_consumer(processes, conn, 1, "prio")
    pausing.resume(conn, "prio")
    wait_for(lambda: all(fetch(conn, j).get_status().value == "finished" for j in order), 30, "every job finished")
    started = sorted(order, key=lambda j: fetch(conn, j).started_at)
    expected = [order[i] for i in (2, 6, 3, 7, 0, 4, 8, 1, 5)]
    assert [j.id for j in started] == [j.id for j in expected]


def test_the_producer_flag_names_and_numbers_and_refuses_bad_ones(conn, redis_url) -> None:
    done = run_cli(
        "producer_main.py", "--task", "sleep", "--param", "seconds=0.1", "--queue", "q1", "--priority", "high"
    )
    assert done.returncode == 0, done.stderr
    done = run_cli("producer_main.py", "--task", "sleep", "--param", "seconds=0.1", "--queue", "q1", "--priority", "1")
    assert done.returncode == 0, done.stderr
    assert priorities.counts(conn, ["q1"])["q1"] == {7: 1, 1: 1}
    for bad in ("highest", "10", "-1", ""):
        done = run_cli("producer_main.py", "--task", "sleep", "--queue", "q1", "--priority", bad)
        assert done.returncode == 2, (bad, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and "priority" in done.stderr
    assert priorities.waiting(conn, "q1") == 2  # nothing half-written


def test_levels_parse_and_refuse() -> None:
    assert [priorities.parse(v) for v in ("low", "NORMAL", "high", "urgent", "0", 9)] == [2, 5, 7, 9, 0, 9]
    for bad in ("top", "10", -1, "4.5", True):
        with pytest.raises(BadInput):
            priorities.parse(bad)


def test_a_page_of_waiting_ids_is_that_slice_of_every_level_in_order(conn) -> None:
    """``waiting_ids`` reads only the slice asked for of each level: whatever the offset and length,
    across the levels' edges and past the end, it is that slice of every waiting id, highest level first."""
    pausing.pause(conn, "pages")
    jobs = _enqueue(conn, "urgent", 3, "pages") + _enqueue(conn, "normal", 4, "pages") + _enqueue(conn, 0, 2, "pages")
    every = [job.id for job in jobs]
    assert priorities.waiting_ids(conn, "pages") == every
    for offset in range(len(every) + 2):
        for length in range(len(every) + 2):
            assert priorities.waiting_ids(conn, "pages", offset, length) == every[offset : offset + length]
        assert priorities.waiting_ids(conn, "pages", offset) == every[offset:]
    assert Queue("pages", connection=conn).get_job_ids(2, 4) == every[2:6]  # RQ's reader, as rq-dashboard pages


def test_cancel_and_empty_see_prioritised_jobs(conn) -> None:
    urgent = _enqueue(conn, "urgent", 2, queue="c")
    normal = _enqueue(conn, "normal", 1, queue="c")
    assert Queue("c", connection=conn).get_job_ids() == [urgent[0].id, urgent[1].id, normal[0].id]
    stop = control.stop_job(conn, urgent[0].id, by="test")
    assert stop.outcome is control.Outcome.DONE
    assert priorities.counts(conn, ["c"])["c"] == {9: 1, 5: 1}
    stops = control.cancel_queued(conn, "c", by="test")
    assert len(stops) == 2 and priorities.waiting(conn, "c") == 0
    requeued = control.requeue(conn, urgent[0].id, by="test")  # a cancelled job comes back at its level
    assert requeued.outcome is control.Outcome.DONE
    assert priorities.counts(conn, ["c"])["c"] == {9: 1}


def test_a_dead_workers_prioritised_job_goes_back_to_its_level(conn) -> None:
    high = _enqueue(conn, "high", 2, queue="r", seconds=30)
    _enqueue(conn, "low", 1, queue="r")
    start_by_a_dead_worker(conn, 1, "r")  # starts the first high job, then dies
    assert priorities.counts(conn, ["r"])["r"] == {7: 1, 2: 1}
    _, handed = recovery.sweep(conn)
    assert [(h.job_id, h.outcome) for h in handed] == [(high[0].id, recovery.REQUEUED)]
    # back at the front of its own level, not on RQ's normal list
    assert Queue("r", connection=conn).get_job_ids()[:2] == [high[0].id, high[1].id]
    assert conn.llen(Queue("r", connection=conn).key) == 0
    assert fetch(conn, high[0]).meta["priority"] == 7


def test_backpressure_counts_every_level(conn) -> None:
    _enqueue(conn, "urgent", 3, queue="bp")
    assert producer._wait_for_room(conn, Queue("bp", connection=conn, serializer=SERIALIZER), 5, None) == 2


def test_the_gateway_takes_a_priority_and_refuses_bad_ones(conn) -> None:
    from workqueue.gateway import create_app

    api = create_app(conn).test_client()
    assert api.post("/jobs", json={"task": "pi", "queue": "g", "priority": "urgent"}).status_code == 201
    assert api.post("/jobs", json={"task": "pi", "queue": "g", "priority": 1}).status_code == 201
    for bad in ("top", 10, -1, "7", True):
        refused = api.post("/jobs", json={"task": "pi", "queue": "g", "priority": bad})
        assert refused.status_code == 422 and refused.json["field"] == "priority", bad
    shown = {q["name"]: q for q in api.get("/queues").json["queues"]}
    assert shown["g"]["waiting_by_priority"] == {"9": 1, "1": 1}


def test_stats_and_metrics_show_waiting_jobs_per_level(conn, redis_url) -> None:
    from workqueue.dashboard import metrics

    _enqueue(conn, "urgent", 2, queue="s")
    _enqueue(conn, "normal", 1, queue="s")
    done = run_cli("producer_main.py", "--stats", "--queue", "s")
    assert "queue s: 3 queued" in done.stdout and "waiting by priority: urgent 2, normal 1" in done.stdout
    text = metrics.render(conn).decode()
    assert 'workqueue_queue_jobs{queue="s"} 3.0' in text
    assert 'workqueue_queue_jobs_by_priority{level="9",queue="s"} 2.0' in text


def test_the_python_api_takes_a_priority(conn, redis_url) -> None:
    import workqueue.api

    batch = workqueue.api.enqueue("pi", queue="a", priority="high", redis_url=redis_url)
    assert priorities.counts(conn, ["a"])["a"] == {7: 1}
    assert fetch(conn, type("J", (), {"id": batch.job_ids[0]})).meta["priority"] == 7
    with pytest.raises(BadInput):
        workqueue.api.enqueue("pi", queue="a", priority="top", redis_url=redis_url)


def test_the_dashboard_enqueues_at_a_level_and_lists_and_counts_every_level(conn, redis_url) -> None:
    from tests.helpers import client_for, token

    client = client_for(redis_url)
    csrf = token(client)
    form = {"csrf_token": csrf, "task": "pi", "count": "2", "queue": "d", "priority": "9"}
    assert client.post("/enqueue", data=form).status_code == 303
    assert client.post("/enqueue", data={**form, "priority": "11"}).status_code == 422
    _enqueue(conn, "normal", 1, queue="d")
    assert priorities.counts(conn, ["d"])["d"] == {9: 2, 5: 1}
    shown = {q["name"]: q for q in client.get("/api/live").json["queues"]}
    assert shown["d"]["by_priority"] == [
        {"level": 9, "name": "urgent", "count": 2},
        {"level": 5, "name": "normal", "count": 1},
    ]
    listed = client.get("/rq/0/data/jobs/d/queued/8/asc/1.json")
    assert listed.status_code == 200, listed.text
    assert len(listed.json["jobs"]) == 3
    queues = client.get("/rq/0/data/queues.json")
    assert {q["name"]: q["count"] for q in queues.json["queues"]}["d"] == 3


def test_rqs_empty_empties_every_level(conn) -> None:
    urgent = _enqueue(conn, "urgent", 2, queue="e")
    _enqueue(conn, "normal", 1, queue="e")
    assert Queue("e", connection=conn).empty() == 3
    assert priorities.waiting(conn, "e") == 0 and not conn.exists(urgent[0].key)


def test_a_sigkilled_consumers_prioritised_job_is_handed_back_at_its_level(conn, processes) -> None:
    from tests.test_recovery import lose_consumer

    urgent = _enqueue(conn, "urgent", 1, queue="k", seconds=30)[0]
    consumer = start_consumer(processes, conn, 1, "k")
    wait_for(lambda: fetch(conn, urgent).get_status().value == "started", 20, "the urgent job to start")
    waiting = _enqueue(conn, "urgent", 1, queue="k")[0]
    lose_consumer(conn, consumer)  # SIGKILLed with its busy worker
    wait_for(lambda: any(h.job_id == urgent.id for h in recovery.sweep(conn)[1]), 30, "the sweep to hand it back")
    assert Queue("k", connection=conn).get_job_ids() == [urgent.id, waiting.id]  # the front of its own level
    assert priorities.counts(conn, ["k"])["k"] == {9: 2}


def test_a_late_answer_naming_a_job_no_longer_taken_is_dropped_not_queued_again(conn) -> None:
    """A worker's BLMOVE answer that arrives late (after a network cut) names a job a sweep has put
    back and another worker finished: with a higher level waiting, the claim must not push that id
    back on the queue (it would run a finished job again); it takes the higher job instead."""
    from workqueue.worker import job_steps
    from workqueue.worker.catalogue_worker import CatalogueWorker

    finished = _enqueue(conn, "normal")[0].id
    conn.lrem("rq:queue:prio", 1, finished)  # taken, handed back, run and finished elsewhere meanwhile
    conn.hset(f"rq:job:{finished}", "status", "finished")
    urgent = _enqueue(conn, "urgent")[0].id
    worker = CatalogueWorker(["prio"], connection=conn, name="late-answer")
    queue = Queue("prio", connection=conn, serializer=SERIALIZER)
    claimed = job_steps.claim(worker, [queue], finished.encode())
    assert claimed.job is not None and claimed.job.id == urgent
    assert conn.llen("rq:queue:prio") == 0 and conn.llen(queue.intermediate_queue_key) == 0
