"""Dependencies (``--after BATCH_OR_JOB [--after-any]``, ``after=``, the gateway's ``after``): jobs that
wait, deferred, until others end; run if all finished, cancelled with the reason (down a chain) if
one failed, was stopped or cancelled, or run whatever the outcome with ``after_any``. Real redis,
real consumers; the worker's own end paths (success, failure, stop, recovery) are the ones used."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import redis
from flask.testing import FlaskClient
from rq.job import Job

import workqueue
from tests import helpers
from tests.helpers import (
    FAULTS,
    Processes,
    cli_env,
    client_for,
    run_cli,
    start_by_a_dead_worker,
    start_consumer,
    wait_for,
)
from workqueue import batches, dependencies, producer, recovery
from workqueue.errors import BadInput
from workqueue.gateway import create_app
from workqueue.jobs import SERIALIZER

EXTRA = {"WORKQUEUE_EXTRA_TASKS": "tests.fault_tasks"}


def fetch(conn: redis.Redis, job_id: str) -> Job:
    return Job.fetch(job_id, connection=conn, serializer=SERIALIZER)


def statuses(conn: redis.Redis, sub: producer.Submission) -> list[str]:
    return [fetch(conn, job.id).get_status().value for job in sub.jobs]


def mark(log: Path, tag: int, seconds: float = 0.0) -> producer.TaskCall:
    """A job that appends ``tag`` to ``log`` when it runs (tests/fault_tasks.py's chaos_mark)."""
    task = FAULTS["chaos_mark"]
    return producer.TaskCall(task, task.validate({"log": str(log), "tag": tag, "seconds": seconds}))


def boom() -> producer.TaskCall:
    task = FAULTS["raise_error"]
    return producer.TaskCall(task, task.validate({"message": "boom"}))


def done(conn: redis.Redis, sub: producer.Submission) -> bool:
    return batches.summary(conn, sub.batch_id).done


def consumer(processes: Processes, conn: redis.Redis, workers: int = 3) -> None:
    env = cli_env(**EXTRA)
    args = ["--workers", str(workers), "--queue", "queue_one"]
    started = processes.start("consumer_main.py", *args, env=env)
    wait_for(lambda: len(helpers.workers(conn)) == workers, 30, f"{workers} workers")
    assert started.poll() is None


def batch_id_of(output: str) -> str:
    return re.search(r"batch ([0-9a-f]{12}): enqueued", output).group(1)


# --- bad input ------------------------------------------------------------------------------------


def test_after_naming_nothing_exits_2_with_one_line_and_enqueues_nothing(conn: redis.Redis) -> None:
    for args in (["--after", "no-such-job-or-batch"], ["--after-any"], ["--after", "x", "--in", "10m"]):
        result = run_cli("producer_main.py", "--task", "sleep", "--param", "seconds=1", *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: ")
    assert (
        "no such job or batch: no-such-job-or-batch"
        in run_cli("producer_main.py", "--task", "sleep", "--after", "no-such-job-or-batch").stderr
    )
    assert not conn.keys("rq:job:*") and not conn.keys("workqueue:batch:*")
    with pytest.raises(BadInput, match="no such job or batch"):
        workqueue.enqueue("sleep", {"seconds": 1}, after="nothing-here")
    with pytest.raises(BadInput, match="after_any goes with after"):
        workqueue.enqueue("sleep", {"seconds": 1}, after_any=True)
    assert not conn.keys("rq:job:*")


# --- the chain ------------------------------------------------------------------------------------


def test_a_chain_of_three_batches_runs_in_order(conn: redis.Redis, processes: Processes, tmp_path: Path) -> None:
    """crawl -> analyse -> report, the last two from the command line by batch id: every job of a
    batch runs after every job of the batch before it, though three workers are free throughout."""
    log = tmp_path / "ran.log"
    first = producer.enqueue(conn, [mark(log, 1, 0.3)] * 3, "queue_one")
    env = cli_env(**EXTRA)
    common = ["--task", "chaos_mark", "--param", f"log={log}", "--count", "3"]
    second = run_cli("producer_main.py", *common, "--param", "tag=2", "--after", first.batch_id, env=env)
    assert second.returncode == 0, second.stderr
    assert f"waits for {first.batch_id}" in second.stdout
    middle = batch_id_of(second.stdout)
    third = run_cli("producer_main.py", *common, "--param", "tag=3", "--after", middle, env=env)
    assert third.returncode == 0, third.stderr
    last = batch_id_of(third.stdout)
    assert {s for _, s in batches.job_statuses(conn, last)} == {"deferred"}
    consumer(processes, conn)
    wait_for(lambda: batches.summary(conn, last).done, 60, "the third batch to end")
    tags = [int(line) for line in log.read_text().split()]
    assert tags == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    for batch_id in (first.batch_id, middle, last):
        summary = batches.summary(conn, batch_id)
        assert (summary.finished, summary.failed) == (3, 0)


def test_a_failure_in_the_first_batch_cancels_the_other_two_with_a_reason(
    conn: redis.Redis, processes: Processes, tmp_path: Path
) -> None:
    log = tmp_path / "ran.log"
    first = producer.enqueue(conn, [boom(), mark(log, 1)], "queue_one")
    second = producer.enqueue(conn, [mark(log, 2)] * 2, "queue_one", after=[first.batch_id])
    third = producer.enqueue(conn, [mark(log, 3)], "queue_one", after=[second.batch_id])
    consumer(processes, conn, workers=2)
    # (the failure cancels the others at once: the first batch's other job may still be running)
    wait_for(lambda: done(conn, first) and done(conn, third), 60, "the first and third batches to end")
    failed = first.jobs[0].id
    assert statuses(conn, second) == ["canceled", "canceled"] and statuses(conn, third) == ["canceled"]
    for job in second.jobs:
        assert fetch(conn, job.id).meta[dependencies.REASON] == f"cancelled: dependency {failed} failed"
    assert re.fullmatch(
        r"cancelled: dependency \S+ was cancelled", fetch(conn, third.jobs[0].id).meta["cancelled_reason"]
    )
    assert log.read_text().split() == ["1"]  # only the first batch's own job ran
    for sub, total in ((second, 2), (third, 1)):
        summary = batches.summary(conn, sub.batch_id)
        assert (summary.total, summary.finished, summary.failed, summary.done) == (total, 0, total, True)
    ends = list(batches.follow(conn, third.batch_id, timeout=5))
    assert [e.outcome for e in ends] == ["failed"] and "cancelled: dependency" in ends[0].detail


def test_after_any_runs_whatever_the_outcome(conn: redis.Redis, processes: Processes, tmp_path: Path) -> None:
    log = tmp_path / "ran.log"
    first = producer.enqueue(conn, [boom()], "queue_one")
    anyway = producer.enqueue(conn, [mark(log, 7)], "queue_one", after=[first.jobs[0].id], after_any=True)
    strict = producer.enqueue(conn, [mark(log, 8)], "queue_one", after=[first.jobs[0].id])
    consumer(processes, conn, workers=2)
    wait_for(lambda: done(conn, anyway) and done(conn, strict), 60, "both dependents to end")
    assert statuses(conn, anyway) == ["finished"] and statuses(conn, strict) == ["canceled"]
    assert log.read_text().split() == ["7"]


def test_kill_job_on_a_running_dependency_cancels_its_dependents(conn: redis.Redis, processes: Processes) -> None:
    """A stop command ends the job "stopped" through the worker's failure path: what waits for it is
    cancelled, and the after-any one runs."""
    running = producer.enqueue(conn, [producer.TaskCall.build("sleep", {"seconds": 30})], "queue_one")
    strict = producer.enqueue(
        conn, [producer.TaskCall.build("sleep", {"seconds": 0.1})], "queue_one", after=[running.batch_id]
    )
    anyway = workqueue.enqueue("sleep", {"seconds": 0.1}, after=running.batch_id, after_any=True)
    consumer(processes, conn, workers=2)
    wait_for(lambda: statuses(conn, running) == ["started"], 30, "the first job to start")
    result = run_cli("kill_thread/kill_job.py", running.jobs[0].id)
    assert result.returncode == 0, result.stderr
    wait_for(lambda: done(conn, strict), 30, "the dependent to be cancelled")
    reason = fetch(conn, strict.jobs[0].id).meta[dependencies.REASON]
    assert reason == f"cancelled: dependency {running.jobs[0].id} was stopped"
    assert anyway.wait(timeout=30).finished == 1


def test_cancelling_a_deferred_job_cancels_what_waits_for_it(conn: redis.Redis) -> None:
    sleep = producer.TaskCall.build("sleep", {"seconds": 1})
    first = producer.enqueue(conn, [sleep], "queue_one")
    second = producer.enqueue(conn, [sleep], "queue_one", after=[first.batch_id])
    third = producer.enqueue(conn, [sleep], "queue_one", after=[second.jobs[0].id])
    result = run_cli("kill_thread/kill_job.py", second.jobs[0].id)
    assert result.returncode == 0, result.stderr
    assert statuses(conn, second) == ["canceled"] and statuses(conn, third) == ["canceled"]
    assert "was cancelled" in fetch(conn, third.jobs[0].id).meta[dependencies.REASON]
    assert statuses(conn, first) == ["queued"]


def test_a_dependency_failed_by_recovery_cancels_its_dependents(conn: redis.Redis, tmp_path: Path) -> None:
    """A job whose worker died and that must not run again is failed by the sweep: its dependents go too."""
    task = FAULTS["count_runs_unsafe"]
    unsafe = producer.enqueue(
        conn, [producer.TaskCall(task, task.validate({"marker": str(tmp_path / "m")}))], "queue_one"
    )
    waiting = producer.enqueue(
        conn, [producer.TaskCall.build("sleep", {"seconds": 1})], "queue_one", after=[unsafe.batch_id]
    )
    start_by_a_dead_worker(conn, 1)
    recovery.sweep(conn)
    assert statuses(conn, unsafe) == ["failed"] and statuses(conn, waiting) == ["canceled"]
    assert (
        fetch(conn, waiting.jobs[0].id).meta[dependencies.REASON] == f"cancelled: dependency {unsafe.jobs[0].id} failed"
    )


def test_dependencies_that_already_ended_are_decided_at_once(conn: redis.Redis, processes: Processes) -> None:
    finished = workqueue.enqueue("sleep", {"seconds": 0.1})
    failed = workqueue.enqueue("factorise", {"n": 12}, queue="other")  # not served: cancelled below
    start_consumer(processes, conn, 1)
    finished.wait(timeout=30)
    run_cli("kill_thread/kill_job.py", failed.job_ids[0])
    runs = workqueue.enqueue("sleep", {"seconds": 0.1}, after=finished)
    assert runs.wait(timeout=30).finished == 1
    cancelled = workqueue.enqueue("sleep", {"seconds": 0.1}, after=[finished, failed.id])
    summary = cancelled.wait(timeout=10)
    assert (summary.finished, summary.failed) == (0, 1)
    assert fetch(conn, cancelled.job_ids[0]).meta[dependencies.REASON].endswith("was cancelled")
    anyway = workqueue.enqueue("sleep", {"seconds": 0.1}, after=[failed], after_any=True)
    assert anyway.wait(timeout=30).finished == 1


# --- the gateway and the dashboard ----------------------------------------------------------------


@pytest.fixture
def api(conn: redis.Redis) -> FlaskClient:
    app = create_app(conn)
    app.testing = True
    return app.test_client()


def test_gateway_after_and_what_a_deferred_job_waits_for(conn: redis.Redis, api: FlaskClient, redis_url: str) -> None:
    first = api.post("/jobs", json={"task": "sleep", "params": {"seconds": 1}}).json
    refused = api.post("/jobs", json={"task": "sleep", "after": ["nothing-here"]})
    assert refused.status_code == 422 and refused.json["field"] == "after" and "no such job" in refused.json["error"]
    for body, field in (
        ({"after": "x"}, "after"),
        ({"after": []}, "after"),
        ({"after_any": True}, "after_any"),
        ({"after": [first["batch_id"]], "in": 5}, "after"),
    ):
        answer = api.post("/jobs", json={"task": "sleep", **body})
        assert answer.status_code == 422 and answer.json["field"] == field, (body, answer.json)
    assert len(conn.keys("rq:job:*")) == 1  # the first job only: nothing half-written
    sent = api.post("/batches", json={"tasks": [{"task": "sleep"}], "after": [first["batch_id"]], "after_any": True})
    assert sent.status_code == 201, sent.json
    job = api.get(f"/jobs/{sent.json['job_ids'][0]}").json
    assert job["status"] == "deferred"
    assert job["waiting_for"] == {
        "jobs": [{"id": first["job_ids"][0], "status": "queued"}],
        "after_any": True,
        "batches": [first["batch_id"]],
    }
    page = client_for(redis_url).get(f"/jobs/{sent.json['job_ids'][0]}")
    assert page.status_code == 200 and b"Waits for" in page.data and first["job_ids"][0].encode() in page.data


def test_dependents_of_jobs_ending_at_once_on_several_workers_are_released_exactly_once(
    conn: redis.Redis, processes: Processes, tmp_path: Path
) -> None:
    """Ten short jobs end at nearly the same instant on four workers, each end checking the twenty
    jobs that wait for all ten: every dependent is released once (runs once), none is left waiting."""
    log = tmp_path / "ran.log"
    consumer(processes, conn, workers=4)
    for round_ in range(3):
        first = producer.enqueue(conn, [mark(log, 1000 + round_, 0.05)] * 10, "queue_one")
        after = producer.enqueue(
            conn, [mark(log, 100 * round_ + i) for i in range(20)], "queue_one", after=[first.batch_id]
        )
        wait_for(lambda after=after: done(conn, after), 60, f"the dependents of round {round_} to end")
        tags = [int(line) for line in log.read_text().split()]
        ran = [t for t in tags if t < 1000 and t // 100 == round_]
        assert sorted(ran) == [100 * round_ + i for i in range(20)], f"round {round_}: {sorted(ran)}"
        assert tags.count(1000 + round_) == 10 and max(i for i, t in enumerate(tags) if t == 1000 + round_) < min(
            i for i, t in enumerate(tags) if t < 1000 and t // 100 == round_
        )
        summary = batches.summary(conn, after.batch_id)
        assert (summary.finished, summary.failed) == (20, 0)
        assert statuses(conn, after) == ["finished"] * 20
