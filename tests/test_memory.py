"""Memory per job (issue 18, item 5): every key expires or is cleaned, a finished job is kept compactly
for as long as its task or its enqueue says, and the producer enqueues in chunks, its memory flat."""

from __future__ import annotations

import dataclasses
import json
import re
import tracemalloc
from pathlib import Path

import pytest
import redis
from rq.group import Group
from rq.results import Result

import task_def
from tests.helpers import Processes, run_cli, start_consumer, wait_for
from workqueue import api, batches, job_json, producer
from workqueue import calls as task_calls
from workqueue.errors import RedisUnavailable
from workqueue.gateway import create_app
from workqueue.jobs import SPENT_FIELDS

#: Keys without a TTL, each one per queue, worker, task or Redis (never per job or batch), and what
#: bounds it: RQ's registries and sets of queues and workers (RQ prunes them: registries by score, a
#: worker's entry at its death), RQ's set of group names (its workers' maintenance drops the names
#: whose group expired), the statistics per queue and task, and the data mark (one key).
ALLOWED_WITHOUT_TTL = re.compile(
    r"rq:(queues|workers|workers:[^:]+|finished:[^:]+|groups)"
    r"|workqueue:stats:(queues|totals:[^:]+|histogram:[^:]+:[^:]+)"
    r"|workqueue:mark"
)


def factorise(n: int = 12, **fields) -> producer.TaskCall:
    return dataclasses.replace(producer.TaskCall.build("factorise", {"n": n}), **fields)


def until_done(conn: redis.Redis, batch_id: str) -> None:
    wait_for(lambda: batches.summary(conn, batch_id).done, 60, f"batch {batch_id} to end")


def keys_without_ttl(conn: redis.Redis) -> list[str]:
    return sorted(k.decode() for k in conn.scan_iter(count=1000) if conn.ttl(k) == -1)


def test_every_key_a_finished_batch_leaves_expires_but_an_allow_list_of_bounded_ones(
    conn: redis.Redis, processes: Processes
) -> None:
    start_consumer(processes, conn, 2)
    now = producer.enqueue(conn, [factorise(n) for n in range(2, 22)])
    later = producer.enqueue(conn, [factorise()], after=[now.batch_id])  # RQ's group set, written directly
    unique = producer.enqueue(conn, [factorise(unique_key="memory-test")])
    for submission in (now, later, unique):
        until_done(conn, submission.batch_id)
    wait_for(lambda: conn.llen("rq:queue:queue_one") == 0, 20, "the queue to empty")

    left = [key for key in keys_without_ttl(conn) if not ALLOWED_WITHOUT_TTL.fullmatch(key)]
    assert left == []
    group_ttl = conn.ttl(Group.get_key(now.batch_id))
    assert 0 < group_ttl <= 24 * 3600
    # The one set RQ never expires holds group names; RQ's maintenance drops a name once its group expired.
    conn.delete(Group.get_key(now.batch_id))
    Group.clean_registries(conn)
    assert now.batch_id.encode() not in conn.smembers(Group.REDIS_GROUP_KEY)


def test_a_finished_job_keeps_its_result_in_its_hash_without_the_spent_fields(
    conn: redis.Redis, processes: Processes
) -> None:
    start_consumer(processes, conn, 1)
    submission = producer.enqueue(conn, [factorise(12)])
    until_done(conn, submission.batch_id)
    job_id = submission.jobs[0].id
    fields = {k.decode() for k in conn.hkeys(f"rq:job:{job_id}")}
    assert not conn.exists(Result.get_key(job_id))  # RQ's result stream: 4 KB of Redis for one entry
    assert "result" in fields and not fields & set(SPENT_FIELDS)
    assert conn.memory_usage(f"rq:job:{job_id}") < 2_048  # 6.5 KB before (hash and stream)
    detail = job_json.job_detail(conn, job_id)
    assert detail is not None and detail["status"] == "finished"
    assert detail["result"] == {"n": 12, "factors": [2, 2, 3], "prime": False}
    assert 23 * 3600 < conn.ttl(f"rq:job:{job_id}") <= 24 * 3600  # the default, a day


def test_the_result_ttl_is_the_enqueues_else_the_tasks_else_a_day(
    conn: redis.Redis, processes: Processes, redis_url: str
) -> None:
    start_consumer(processes, conn, 2)
    by_task = dataclasses.replace(task_def.get_task("factorise"), result_ttl=300)
    task_only = producer.enqueue(conn, [producer.TaskCall(by_task, {"n": 12})])
    both = producer.enqueue(conn, [producer.TaskCall(by_task, {"n": 12}, result_ttl=120)])
    from_api = api.enqueue("factorise", {"n": 12}, result_ttl="10m")
    cli = run_cli("producer_main.py", "--task", "factorise", "--param", "n=12", "--keep-results", "1h", "--quiet")
    assert cli.returncode == 0, cli.stderr
    cli_batch = re.search(r"batch (\w+):", cli.stdout)[1]
    gateway = create_app(conn).test_client()
    sent = gateway.post("/jobs", json={"task": "factorise", "params": {"n": 12}, "result_ttl": 90})
    assert sent.status_code == 201, sent.json
    expected = {task_only.batch_id: 300, both.batch_id: 120, from_api.id: 600, cli_batch: 3600,
                sent.json["batch_id"]: 90}  # fmt: skip
    for batch_id, ttl in expected.items():
        until_done(conn, batch_id)
        ((job_id, _status),) = batches.job_statuses(conn, batch_id)
        assert ttl - 30 < conn.ttl(f"rq:job:{job_id}") <= ttl, batch_id

    bad = run_cli("producer_main.py", "--task", "factorise", "--keep-results", "31d")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].endswith("expected 0 seconds to 30 days")
    refused = gateway.post("/jobs", json={"task": "factorise", "result_ttl": -1})
    assert refused.status_code == 422 and refused.json["field"] == "result_ttl"


def transactions(conn: redis.Redis) -> int:
    """Enqueueing transactions so far: each a script call that ran (``lua/enqueue.lua``) or a MULTI's EXEC."""
    stats = conn.info("commandstats")
    return sum(
        int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))
        - int(stats.get(f"cmdstat_{name}", {}).get("failed_calls", 0))
        for name in ("exec", "evalsha", "eval")
    )


def test_the_producer_enqueues_in_chunks_of_a_thousand(conn: redis.Redis) -> None:
    before = transactions(conn)
    submission = producer.enqueue(conn, [factorise()] * 2_500)
    assert transactions(conn) - before == 3
    assert len(submission.jobs) == 2_500 == conn.llen("rq:queue:queue_one")
    assert batches.summary(conn, submission.batch_id).total == 2_500


def test_the_producers_memory_is_flat_in_the_number_of_jobs_from_a_file(conn: redis.Redis, tmp_path: Path) -> None:
    def peak(lines: int) -> int:
        path = tmp_path / f"{lines}.jsonl"
        path.write_text("".join(json.dumps({"task": "factorise", "params": {"n": i + 2}}) + "\n" for i in range(lines)))
        tracemalloc.start()
        try:
            producer.enqueue(conn, task_calls.CallFile(path))
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            conn.flushdb()

    small, large = peak(2_000), peak(8_000)
    # Held whole, 6,000 more jobs are ~40 MB more (RQ's jobs, the calls, one transaction's commands);
    # a chunk at a time, they are their ids (~1 MB).
    assert large - small < 5_000_000, (small, large)


def test_redis_failing_midway_leaves_whole_chunks_and_says_how_many(conn: redis.Redis) -> None:
    conn.flushall()
    used = int(conn.info("memory")["used_memory"])
    conn.config_set("maxmemory", used + 4_000_000)  # room for a few chunks of 1,000 jobs, not ten
    try:
        with pytest.raises(RedisUnavailable) as raised:
            producer.enqueue(conn, [factorise()] * 10_000)
    finally:
        conn.config_set("maxmemory", 0)
    landed = conn.llen("rq:queue:queue_one")
    assert 0 < landed < 10_000 and landed % producer.CHUNK == 0
    assert f"{landed} of 10000 jobs were enqueued before it did" in str(raised.value)
    assert "each all or none: the one under way did not" in str(raised.value)
