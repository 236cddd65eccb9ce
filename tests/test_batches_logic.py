"""The batches' logic in-process, against a real redis-server and without workers: each job's end
is recorded as a worker's callbacks record it, and the batch's counts, events and summary are read
as the producer reads them. (The same with real worker processes: test_batches.py.)"""

from __future__ import annotations

import json

import pytest
import redis
from rq.job import Job

from workqueue import batches, jobstats, producer
from workqueue.settings import RESULT_TTL


def submit(conn: redis.Redis, count: int = 2, task: str = "sleep", **params) -> producer.Submission:
    """A batch of ``count`` jobs of ``task``, enqueued as the producer does (no worker runs them)."""
    return producer.enqueue(conn, [producer.TaskCall.build(task, params or {"seconds": 1})] * count, "queue_one")


def events(conn: redis.Redis, batch_id: str) -> list[dict[str, str]]:
    entries = conn.xrange(batches.events_key(batch_id))
    return [{k.decode(): v.decode() for k, v in fields.items()} for _id, fields in entries]


def test_a_job_counted_twice_is_counted_once(conn) -> None:
    batch = submit(conn)
    first, _second = batch.jobs
    batches.job_ended(conn, first, "finished", detail={"slept": 1})
    batches.job_ended(conn, first, "finished", detail={"slept": 1})
    summary = batches.summary(conn, batch.batch_id)
    assert (summary.total, summary.finished, summary.failed, summary.done) == (2, 1, 0, False)
    told = events(conn, batch.batch_id)
    assert [e["job"] for e in told] == [first.id, first.id]
    assert [e.get("redelivery") for e in told] == [None, "1"]


def test_the_last_end_closes_the_batch_once(conn) -> None:
    batch = submit(conn)
    first, second = batch.jobs
    batches.job_ended(conn, first, "finished", detail=1)
    assert batches.summary(conn, batch.batch_id).elapsed is None
    batches.job_ended(conn, second, "failed", detail="ValueError: boom")
    batches.job_ended(conn, second, "failed", detail="ValueError: boom")  # its end told again
    summary = batches.summary(conn, batch.batch_id)
    assert (summary.finished, summary.failed, summary.done, summary.queue) == (1, 1, True, "queue_one")
    assert summary.elapsed is not None and summary.elapsed >= 0
    told = events(conn, batch.batch_id)
    assert told.count({"batch": "done"}) == 1 and told[2] == {"batch": "done"}
    assert told[-1]["redelivery"] == "1"


def test_wait_tells_every_end_and_lists_the_failures_without_their_redeliveries(conn) -> None:
    batch = submit(conn, count=3)
    a, b, c = batch.jobs
    batches.job_ended(conn, a, "failed", detail="ValueError: boom")
    batches.job_ended(conn, a, "failed", detail="ValueError: boom")
    batches.job_ended(conn, b, "finished", detail={"slept": 1})
    batches.job_ended(conn, c, "finished", detail={"slept": 1})
    told, done = [], []
    summary = batches.wait(conn, batch.batch_id, on_task=told.append, on_done=done.append, timeout=10)
    assert [(t.job_id, t.outcome, t.redelivery) for t in told] == [
        (a.id, "failed", False),
        (a.id, "failed", True),
        (b.id, "finished", False),
        (c.id, "finished", False),
    ]
    assert told[2].detail == {"slept": 1} and told[0].task == "sleep"
    assert [f.job_id for f in summary.failures] == [a.id] and summary.failures[0].detail == "ValueError: boom"
    assert done == [summary] and (summary.finished, summary.failed) == (2, 1)


def test_wait_tells_the_last_end_that_lands_just_after_a_read_gave_up_waiting(conn) -> None:
    """The producer's wait reads the batch's stream, waiting up to ``block_ms``; when a read gives up,
    it asks whether the batch has ended. The last end landing between the two (a real race, seen
    once in a full run: `--wait` printed "failed 1 of 1" and no failure) must still be told."""
    batch = submit(conn, count=1)
    (job,) = batch.jobs

    class EndLandsAfterAnEmptyRead(redis.Redis):
        """A real client whose first read that finds nothing is followed by the job's end, recorded
        in Redis as a worker records it, before the caller's next request."""

        raced = False

        def xread(self, *args, **kwargs):  # type: ignore[override]
            reply = super().xread(*args, **kwargs)
            if not reply and not self.raced:
                self.raced = True
                batches.job_ended(conn, job, "failed", detail="ConnectError: refused")
            return reply

    racing = EndLandsAfterAnEmptyRead(connection_pool=conn.connection_pool)
    told: list[batches.TaskEnd] = []
    summary = batches.wait(racing, batch.batch_id, on_task=told.append, timeout=10)
    assert racing.raced and summary.done and summary.failed == 1
    assert [(t.job_id, t.outcome) for t in told] == [(job.id, "failed")]
    assert [f.detail for f in summary.failures] == ["ConnectError: refused"]


def test_an_end_after_the_batch_expired_counts_in_the_statistics_not_in_a_new_batch(conn) -> None:
    batch = submit(conn, count=1)
    conn.delete(batches.key(batch.batch_id))
    batches.job_ended(conn, batch.jobs[0], "finished")
    with pytest.raises(KeyError):
        batches.summary(conn, batch.batch_id)
    assert events(conn, batch.batch_id) == [] and not conn.exists(batches.key(batch.batch_id))
    assert conn.hget(jobstats.totals_key("queue_one"), "sleep:finished") == b"1"


def test_a_failure_that_will_be_retried_is_not_an_end(conn) -> None:
    batch = submit(conn, count=1)
    job = batch.jobs[0]
    job.retries_left = 1
    batches.task_failed(job, conn, ValueError, ValueError("boom"), None)
    assert events(conn, batch.batch_id) == [] and batches.summary(conn, batch.batch_id).failed == 0
    job.retries_left = 0
    batches.task_failed(job, conn, ValueError, ValueError("boom"), None)
    assert [e["detail"] for e in events(conn, batch.batch_id) if "job" in e] == ['"ValueError: boom"']
    assert batches.summary(conn, batch.batch_id).done


def test_a_stopped_task_ends_failed_saying_who_stopped_it(conn) -> None:
    batch = submit(conn, count=2)
    by_dashboard, by_default = batch.jobs
    by_dashboard.meta["stopped_by"] = "the dashboard"
    batches.task_stopped(by_dashboard, conn)
    batches.task_stopped(by_default, conn)
    ends = [e for e in events(conn, batch.batch_id) if "job" in e]
    assert [(e["outcome"], e["detail"]) for e in ends] == [
        ("failed", '"stopped by the dashboard"'),
        ("failed", '"stopped by kill_job"'),
    ]


def test_a_finished_tasks_detail_is_its_result_as_json_cut_to_2000_characters_still_json(conn) -> None:
    batch = submit(conn, count=2)
    batches.task_finished(batch.jobs[0], conn, {"words": ["x" * 3000]})
    batches.task_finished(batch.jobs[1], conn, {"n": 3})
    details = [e["detail"] for e in events(conn, batch.batch_id) if "job" in e]
    assert len(details[0]) <= 2000 and json.loads(details[0]).startswith('{"words": ["xxx')
    assert details[1] == '{"n": 3}'


def test_an_unknown_batch_has_no_summary(conn) -> None:
    with pytest.raises(KeyError):
        batches.summary(conn, "no-such-batch")


def test_job_statuses_lists_each_job_sorted_with_none_once_it_expired(conn) -> None:
    batch = submit(conn, count=3)
    gone = batch.jobs[1]
    conn.delete(Job.key_for(gone.id))
    statuses = batches.job_statuses(conn, batch.batch_id)
    assert [job_id for job_id, _ in statuses] == sorted(job.id for job in batch.jobs)
    assert dict(statuses) == {**{job.id: "queued" for job in batch.jobs}, gone.id: None}


def test_a_long_result_does_not_break_following_the_batch(conn) -> None:
    batch = submit(conn, count=1)
    batches.task_finished(batch.jobs[0], conn, {"words": ["x" * 3000]})
    ends = []
    assert batches.wait(conn, batch.batch_id, on_task=ends.append, timeout=5).done
    (end,) = ends
    assert isinstance(end.detail, str) and end.detail.startswith('{"words": ["xxx') and end.detail.endswith("...")


def test_a_jobs_end_sets_no_ttl_the_batchs_keys_have_theirs_from_their_start_and_again_from_its_end(conn) -> None:
    batch = submit(conn)
    first, second = batch.jobs
    prefix = batches.key(batch.batch_id)
    keys = [prefix, f"{prefix}:ended", batches.events_key(batch.batch_id), f"rq:group:{batch.batch_id}"]
    assert all(0 < conn.ttl(k) <= RESULT_TTL for k in keys)  # from the start, before any end

    def end(job: Job) -> None:
        with conn.pipeline(transaction=False) as pipe:  # the batch's part of a job's end alone
            batches.record_end(pipe, job, "finished", stats=("sleep", None, None))
            pipe.execute()

    def expires() -> int:
        return conn.info("commandstats").get("cmdstat_expire", {}).get("calls", 0)

    before = expires()
    end(first)
    assert expires() == before  # the stream and the ended set were made with their TTL
    assert [e["job"] for e in events(conn, batch.batch_id)] == [first.id]
    for k in keys:
        conn.expire(k, 100)
    end(second)
    assert all(conn.ttl(k) > 100 for k in keys)  # the last end: they last RESULT_TTL after it
    assert batches.summary(conn, batch.batch_id).done
