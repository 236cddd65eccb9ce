"""The statistics' logic in-process, against a real redis-server and with the clock passed in:
per-minute counters and their retention, run-time buckets, duration samples, percentiles,
throughput over the last minutes, the history's series and backlog samples. (The same numbers
as the producer, the consumer and the dashboard show them, with real workers: test_batches.py
and test_dashboard.py.)"""

from __future__ import annotations

import random

import redis

from workqueue import jobstats, tallies
from workqueue.settings import STATS_RETENTION, STATS_SAMPLES

#: A fixed clock: half a minute into minute M.
M = 28_000_000
T = M * 60 + 30.0


def end(
    conn: redis.Redis,
    at: float,
    outcome: str = "finished",
    task: str = "sleep",
    queue: str = "qa",
    run: float | None = 0.3,
    wait: float | None = 1.0,
) -> None:
    """Record one job's end at clock ``at``, as a worker does."""
    with conn.pipeline(transaction=False) as pipe:
        jobstats.record_end(pipe, queue, task, outcome, run, wait, now=at)
        pipe.execute()


def task_stats(
    conn: redis.Redis, at: float, window: int = STATS_RETENTION, queue: str = "qa", task: str = "sleep"
) -> jobstats.TaskStats:
    (report,) = jobstats.collect(conn, [queue], window=window, now=at)
    return report.tasks[task]


def counts(conn: redis.Redis, key: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in conn.hgetall(key).items()}


def test_a_jobs_end_is_counted_in_its_minute_in_the_totals_and_in_its_run_time_bucket(conn) -> None:
    end(conn, T, run=0.3, wait=1.5)
    end(conn, T + 1, outcome="failed", run=0.004, wait=None)
    assert counts(conn, jobstats.bucket_key("qa", M)) == {"sleep:finished": "1", "sleep:failed": "1"}
    assert counts(conn, jobstats.totals_key("qa")) == {"sleep:finished": "1", "sleep:failed": "1"}
    histogram = counts(conn, jobstats.histogram_key("qa", "sleep"))
    assert histogram.pop("le:0.5") == "1" and histogram.pop("le:0.005") == "1" and histogram.pop("count") == "2"
    assert float(histogram.pop("sum")) == 0.304 and histogram == {}
    assert conn.lrange(jobstats.samples_key("qa", "sleep", "wait"), 0, -1) == [b"1.5"]


def test_a_run_beyond_the_last_bucket_counts_as_inf_and_an_unknown_run_is_neither_bucketed_nor_sampled(conn) -> None:
    end(conn, T, run=jobstats.BUCKETS[-1] + 1)
    end(conn, T, run=None, wait=None)
    histogram = counts(conn, jobstats.histogram_key("qa", "sleep"))
    assert histogram["le:+Inf"] == "1" and histogram["count"] == "1"
    assert len(conn.lrange(jobstats.samples_key("qa", "sleep", "run"), 0, -1)) == 1
    assert counts(conn, jobstats.totals_key("qa")) == {"sleep:finished": "2"}


def test_each_task_keeps_only_its_last_samples_durations_newest_first(conn) -> None:
    with conn.pipeline(transaction=False) as pipe:
        for i in range(STATS_SAMPLES + 5):
            jobstats.record_end(pipe, "qa", "sleep", "finished", run=float(i), wait=None, now=T)
        pipe.execute()
    kept = [float(v) for v in conn.lrange(jobstats.samples_key("qa", "sleep", "run"), 0, -1)]
    assert len(kept) == STATS_SAMPLES
    assert kept[0] == STATS_SAMPLES + 4 and kept[-1] == 5.0


def test_minute_counters_and_samples_expire_with_the_retention_totals_and_histograms_never(conn) -> None:
    end(conn, T)
    for key in (
        jobstats.bucket_key("qa", M),
        jobstats.samples_key("qa", "sleep", "run"),
        jobstats.samples_key("qa", "sleep", "wait"),
    ):
        assert 0 < conn.ttl(key) <= STATS_RETENTION, key
    assert conn.ttl(jobstats.totals_key("qa")) == -1
    assert conn.ttl(jobstats.histogram_key("qa", "sleep")) == -1


def test_the_minute_is_the_clocks_seconds_over_60_rounded_down() -> None:
    assert jobstats.minute(T) == M and jobstats.minute(M * 60) == M and jobstats.minute(M * 60 - 0.001) == M - 1


def test_percentiles_take_the_nearest_rank_whatever_the_order() -> None:
    values = [float(v) for v in range(1, 12)]
    random.Random(7).shuffle(values)
    assert jobstats.percentile(values, 50) == 6.0
    assert jobstats.percentile(values, 95) == 11.0
    assert jobstats.percentile(values, 0) == 1.0 and jobstats.percentile(values, 100) == 11.0
    assert jobstats.percentile([0.25], 95) == 0.25
    assert jobstats.percentile([], 50) is None


def test_throughput_counts_this_minutes_and_the_last_minutes_ends_over_the_seconds_they_cover(conn) -> None:
    end(conn, T)
    end(conn, T - 60, outcome="failed")
    end(conn, T - 120)
    stats = task_stats(conn, T)
    assert (stats.finished, stats.failed) == (2, 1)
    assert stats.recent_ended == 2 and stats.recent_seconds == 90.0
    assert stats.throughput == 2 / 90
    assert stats.as_dict()["throughput"] == round(2 / 90, 3)
    assert task_stats(conn, T + 120).recent_ended == 0  # two minutes on: nothing recent


def test_collect_counts_only_the_minutes_inside_its_window(conn) -> None:
    end(conn, T - 600)
    end(conn, T - 240)
    end(conn, T)
    assert task_stats(conn, T, window=300).finished == 2
    assert task_stats(conn, T, window=60).finished == 1
    assert task_stats(conn, T).finished == 3


def test_collect_reports_percentiles_of_the_kept_samples(conn) -> None:
    for seconds in (0.1, 0.2, 0.3, 0.4, 5.0):
        end(conn, T, run=seconds, wait=seconds * 2)
    figures = task_stats(conn, T).as_dict()
    assert (figures["run_p50"], figures["run_p95"]) == (0.3, 5.0)
    assert (figures["wait_p50"], figures["wait_p95"]) == (0.6, 10.0)


def test_history_lists_each_minute_oldest_first_with_its_ends_and_backlog_sample(conn) -> None:
    conn.sadd(f"{jobstats.PREFIX}:queues", "qa")
    conn.rpush("rq:queue:qa", "j1", "j2")
    jobstats.sample_backlog(conn, now=T - 60)
    end(conn, T - 120, outcome="failed")
    end(conn, T)
    end(conn, T + 5)
    history = jobstats.history(conn, minutes=3, now=T)
    assert history["minutes"] == [(M - 2) * 60, (M - 1) * 60, M * 60]
    assert history["finished"] == [0, 0, 2] and history["failed"] == [1, 0, 0]
    assert history["queues"] == {"qa": {"finished": [0, 0, 2], "failed": [1, 0, 0], "backlog": [None, 2, None]}}


def test_the_last_backlog_sample_of_a_minute_wins(conn) -> None:
    conn.sadd(f"{jobstats.PREFIX}:queues", "qa")
    conn.rpush("rq:queue:qa", "j1", "j2", "j3")
    jobstats.sample_backlog(conn, now=T)
    conn.lpop("rq:queue:qa")
    jobstats.sample_backlog(conn, now=T + 20)
    assert jobstats.history(conn, minutes=1, now=T)["queues"]["qa"]["backlog"] == [2]
    assert 0 < conn.ttl(jobstats.backlog_key(M)) <= STATS_RETENTION


def test_the_report_shows_a_dash_without_samples_and_milliseconds_below_a_second(conn) -> None:
    end(conn, T, run=0.25, wait=None)
    end(conn, T, run=2.5, wait=None)
    lines = jobstats.format_report(jobstats.collect(conn, ["qa"], now=T))
    assert lines[0] == "queue qa: 0 queued, 0 running"
    row = lines[2].split()
    assert row[:5] == ["sleep", "0", "2", "0", "0"]
    assert row[6:] == ["-", "-", "250ms", "2.50s"]  # wait p50, p95, run p50, p95


def _everything(conn: redis.Redis) -> dict[str, object]:
    """Every key's contents (hashes as dicts, lists as lists) and whether it expires."""
    found: dict[str, object] = {}
    for key in conn.keys("*"):
        kind = conn.type(key).decode()
        content = conn.hgetall(key) if kind == "hash" else conn.lrange(key, 0, -1)
        found[key.decode()] = (content, conn.ttl(key) > 0)
    return found


def test_a_tally_writes_at_its_flush_what_one_write_per_end_would_have(conn) -> None:
    ends = [("finished", "sleep", 0.3, 1.5), ("failed", "sleep", 0.004, None), ("finished", "pi", None, 2.0)]
    ends += [("finished", "sleep", float(i), 0.5) for i in range(STATS_SAMPLES + 3)]
    for outcome, task, run, wait in ends:
        end(conn, T, outcome=outcome, task=task, run=run, wait=wait)
    one_by_one = _everything(conn)
    conn.flushdb()
    tally = tallies.Tally(conn)
    for outcome, task, run, wait in ends:
        tally.add_end("qa", task, outcome, run, wait, now=T)
    assert conn.dbsize() == 0  # nothing written per end
    tally.flush()
    tallied = _everything(conn)
    histogram = jobstats.histogram_key("qa", "sleep")
    sums = [float(found.pop(histogram)[0].pop(b"sum")) for found in (one_by_one, tallied)]  # type: ignore[union-attr]
    assert abs(sums[0] - sums[1]) < 1e-6
    assert tallied == one_by_one
    tally.flush()  # nothing more to write: nothing written twice
    assert conn.hget(jobstats.totals_key("qa"), "sleep:finished") == str(STATS_SAMPLES + 4).encode()


def test_a_tally_adds_to_a_workers_counters_only_while_its_hash_lives(conn) -> None:
    tally = tallies.Tally(conn)
    conn.hset("rq:worker:w1", "birth", "x")
    tally.add_worker("rq:worker:w1", 2, 0.25)
    tally.add_worker("rq:worker:w1", 1, 0.5)
    tally.add_worker("rq:worker:gone", 1, 0.5)
    tally.flush()
    assert conn.hget("rq:worker:w1", "successful_job_count") == b"3"
    assert float(conn.hget("rq:worker:w1", "total_working_time")) == 0.75
    assert not conn.exists("rq:worker:gone")  # a worker unregistered before its horse's last flush


def test_a_tally_that_cannot_write_keeps_its_counts_for_the_next_flush(conn, redis_server) -> None:
    away = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    tally = tallies.Tally(away)
    tally.add_end("qa", "sleep", "finished", 0.3, 1.0, now=T)
    try:
        tally.flush()
    except redis.RedisError:
        pass
    else:
        raise AssertionError("a flush to no server should raise")
    tally.add_end("qa", "sleep", "finished", 0.3, 1.0, now=T)
    tally.connection = conn
    tally.flush()
    assert counts(conn, jobstats.totals_key("qa")) == {"sleep:finished": "2"}
    assert len(conn.lrange(jobstats.samples_key("qa", "sleep", "run"), 0, -1)) == 2
