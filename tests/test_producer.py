"""The producer command, by flag (a real process) and by prompt (click's runner), against real Redis."""

from __future__ import annotations

import json
import math
import re
import sys
import zlib

import pytest
import redis
from click.testing import CliRunner
from rq import Queue

import task_def
from tests.helpers import RedisServer, run_cli
from workqueue import calls as task_calls
from workqueue import producer, queued_hash
from workqueue.cli import producer as producer_cli
from workqueue.errors import BadInput
from workqueue.jobs import SERIALIZER
from workqueue.settings import MAX_PARAMS_BYTES


def queued(conn: redis.Redis, name: str = "queue_one") -> int:
    return len(Queue(name, connection=conn, serializer=SERIALIZER))


def test_list_tasks_shows_each_task_with_parameters_and_bounds() -> None:
    result = run_cli("producer_main.py", "--list-tasks")
    assert result.returncode == 0
    assert "sleep" in result.stdout and "seconds" in result.stdout and "0 < seconds <= 3,600" in result.stdout
    assert "url" in result.stdout and "required" in result.stdout


def test_flags_enqueue_count_jobs_as_json_with_validated_params(conn: redis.Redis) -> None:
    result = run_cli("producer_main.py", "--task", "sleep", "--param", "seconds=2", "--count", "10", "--queue", "q2")
    assert result.returncode == 0, result.stderr
    assert "enqueued 10 × sleep(seconds=2.0) on q2" in result.stdout
    q = Queue("q2", connection=conn, serializer=SERIALIZER)
    assert len(q) == 10
    raw = conn.hget(f"rq:job:{q.job_ids[0]}", "data")
    func, _instance, args, kwargs = json.loads(zlib.decompress(raw))  # JSON (RQ zlib-compresses it), never pickle
    assert (func, args, kwargs) == ("task_def.sleep.sleep", [], {"seconds": 2.0})


def test_default_queue_is_queue_one_and_count_one(conn: redis.Redis) -> None:
    assert run_cli("producer_main.py", "--task", "primes").returncode == 0
    assert queued(conn) == 1


def test_many_jobs_go_to_redis_in_one_round_trip(redis_url: str, sends) -> None:
    conn = redis.Redis.from_url(redis_url)
    call = producer.TaskCall.build("sleep", {"seconds": 1})
    producer.enqueue(conn, [call], "bulk")  # loads the enqueue script, once per Redis
    sends.clear()
    jobs = producer.enqueue(conn, [call] * 500, "bulk").jobs
    assert len(jobs) == 500
    assert len(sends) == 1 and b"EVALSHA" in sends[0], sends  # one request: one script call, no transaction
    assert len(Queue("bulk", connection=conn, serializer=SERIALIZER)) == 501


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "nope"], "unknown task 'nope'"),
        (["--task", "sleep", "--param", "seconds=abc"], "seconds: expected a number, got 'abc'"),
        (["--task", "sleep", "--param", "seconds=0"], "out of bounds"),
        (["--task", "sleep", "--param", "minutes=1"], "unknown parameter 'minutes'"),
        (["--task", "sleep", "--param", "seconds"], "expected KEY=VALUE"),
        (["--task", "scrape", "--param", "url=ftp://x.org/"], "http:// or https://"),
        (["--task", "sleep", "--count", "0"], "'--count': 0 is not in the range"),
        (["--task", "sleep", "--count", "abc"], "'--count': 'abc' is not a valid integer"),
        (["--task", "sleep", "--queue", ""], "invalid queue name ''"),
        (["--task", "sleep", "--queue", "two words"], "invalid queue name 'two words'"),
        (["--task", "sleep", "--queue", "a,b"], "invalid queue name 'a,b'"),
        (["--task", "sleep", "--from-file", "examples/demo.jsonl"], "do not combine"),
        ([], "missing --task NAME"),
        (["--batch", "abc", "--task", "sleep"], "--stats and --batch each stand alone"),
        (["--stats", "--wait"], "--stats and --batch each stand alone"),
        (["--task", "sleep", "--retries", "21"], "'--retries': 21 is not in the range"),
        (["--task", "sleep", "--max-queued", "0"], "'--max-queued': 0 is not in the range"),
        (["--wait"], "missing --task NAME"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_enqueued(conn: redis.Redis, args: list, message: str) -> None:
    result = run_cli("producer_main.py", *args)
    assert result.returncode == 2, result
    assert result.stderr.count("\n") == 1 and message in result.stderr and "Traceback" not in result.stderr
    assert conn.keys() == []


def test_unreachable_explicit_redis_is_exit_1_naming_the_url_with_password_masked() -> None:
    result = run_cli("producer_main.py", "--task", "sleep", "--redis-url", "redis://:hunter2@127.0.0.1:1/0")
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot reach Redis at redis://:***@127.0.0.1:1/0")
    assert result.stderr.count("\n") == 1 and "hunter2" not in result.stderr + result.stdout


def test_wrong_password_is_exit_1() -> None:
    server = RedisServer("--requirepass", "s3cret")
    try:
        server.wait_ready(password="s3cret")
        good = run_cli(
            "producer_main.py", "--task", "sleep", "--redis-url", f"redis://:s3cret@127.0.0.1:{server.port}/0"
        )
        assert good.returncode == 0, good.stderr
        bad = run_cli("producer_main.py", "--task", "sleep", "--redis-url", f"redis://:wrong@127.0.0.1:{server.port}/0")
        assert bad.returncode == 1 and "refused the credentials" in bad.stderr and "wrong" not in bad.stderr
        assert redis.Redis(port=server.port, password="s3cret").dbsize() > 0
    finally:
        server.stop()


def test_from_file_validates_every_line_before_enqueueing_anything(conn: redis.Redis, tmp_path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text('{"task": "sleep", "params": {"seconds": 1}}\n\n{"task": "primes", "params": {"n": 100}}\n')
    assert run_cli("producer_main.py", "--from-file", str(good)).returncode == 0
    assert queued(conn) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task": "sleep", "params": {"seconds": 1}}\n{"task": "sleep", "params": {"seconds": -1}}\n')
    result = run_cli("producer_main.py", "--from-file", str(bad), "--queue", "other")
    assert result.returncode == 2 and "bad.jsonl:2: seconds" in result.stderr
    assert queued(conn, "other") == 0


def test_demo_batch_is_valid() -> None:
    from pathlib import Path

    calls = task_calls.load_calls(Path(__file__).resolve().parent.parent / "examples" / "demo.jsonl")
    assert {c.task.name for c in calls} == {"sleep", "scrape", "primes", "pi", "fibonacci", "factorise"}


def test_parameters_over_the_size_limit_are_refused() -> None:
    from workqueue.errors import BadInput

    with pytest.raises(BadInput, match="over the 1,000,000 limit"):
        producer.TaskCall.build("scrape", {"url": "http://example.com/?q=" + "x" * 1_000_001})


@pytest.fixture
def prompting(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setattr(producer_cli, "can_prompt", lambda: True)
    return CliRunner()


def test_bare_run_prompts_for_task_params_queue_and_count(prompting: CliRunner, conn: redis.Redis) -> None:
    result = prompting.invoke(producer_cli.main, [], input="sleep\n2.5\nq3\n4\n\n\n")
    assert result.exit_code == 0, result.output
    assert "seconds: how long to sleep [0 < seconds <= 3,600]" in result.output
    q = Queue("q3", connection=conn, serializer=SERIALIZER)
    assert len(q) == 4 and q.jobs[0].kwargs == {"seconds": 2.5}


def test_prompts_ask_again_on_bad_answers(prompting: CliRunner, conn: redis.Redis) -> None:
    answers = "nope\n1\nabc\n0\n1\nbad name\nqueue_one\n0\nx\n2\n\nsoon\nurgent\n"
    result = prompting.invoke(producer_cli.main, [], input=answers)
    assert result.exit_code == 0, result.output
    assert "expected a number, got 'abc'" in result.output and "out of bounds" in result.output
    assert "invalid queue name 'bad name'" in result.output
    assert "priority 'soon'" in result.output  # asked again, then taken: the urgent level's list
    assert conn.llen("workqueue:priority:queue_one:9") == 2


def test_prompt_defaults_are_offered(prompting: CliRunner, conn: redis.Redis) -> None:
    result = prompting.invoke(producer_cli.main, [], input="\n\n\n\n\n\n")
    assert result.exit_code == 0, result.output
    q = Queue("queue_one", connection=conn, serializer=SERIALIZER)
    assert len(q) == 1 and q.jobs[0].func_name == "task_def.sleep.sleep" and q.jobs[0].kwargs == {"seconds": 5.0}


@pytest.mark.parametrize(
    "task, params, options",
    [
        ("sleep", {"seconds": 1}, {}),
        ("sleep", {"seconds": 1}, {"retries": 3, "timeout": 30}),
        ("sleep", {"seconds": 1}, {"retries": 0, "priority": "urgent", "result_ttl": "10m"}),
        ("scrape", {"url": "https://example.com/a"}, {}),  # the task's own limit key
        ("primes", {"n": 100}, {"limit_key": "k:1", "unique": True, "unique_for": 60}),
        ("pi", {"samples": 1000}, {"result_ttl": 0, "priority": 0}),
    ],
)
def test_the_enqueue_writes_the_hash_rqs_job_would(conn: redis.Redis, task: str, params: dict, options: dict) -> None:
    """The job hash ``queued_hash.fields`` builds without RQ's Job is RQ's ``to_dict()`` of the job its
    ``Queue.enqueue_many`` makes (CatalogueJob's fields included), field for field and in order."""
    producer.rq_compat.install()
    queue = producer._queue(conn, "hashes")
    call = producer.TaskCall.build(task, params, **options)
    data = producer._prepare(call, call.unique_key)
    job_id, fields = queued_hash.fields(queue, data, "batch1")
    expected = queued_hash.job(queue, data, "batch1").to_dict()
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z"
    for name in ("created_at", "enqueued_at"):
        assert re.fullmatch(stamp, fields.pop(name)) and re.fullmatch(stamp, expected.pop(name))
    assert job_id == data.job_id and list(fields.items()) == list(expected.items())
    positional = data._replace(args=(7,))  # outside what the producer asks for: RQ's own Job
    assert json.loads(zlib.decompress(queued_hash.fields(queue, positional, "batch1")[1]["data"]))[2] == [7]


def test_parameters_over_the_json_limit_are_refused_by_their_json_size() -> None:
    """The limit is on the parameters' JSON (escapes counted), whether or not it had to be written to tell."""
    url = "https://example.com/"
    under = producer.TaskCall.build("scrape", {"url": url + "a" * 200_000})  # bounded over the limit, written
    assert len(json.dumps(under.params)) < MAX_PARAMS_BYTES
    for path, size in (("a" * MAX_PARAMS_BYTES, MAX_PARAMS_BYTES + 70), ("é" * 200_000, 1_200_070)):
        with pytest.raises(BadInput, match=f"scrape: parameters are {size:,} bytes of JSON, over the 1,000,000 limit"):
            producer.TaskCall.build("scrape", {"url": url + path})
    for task in task_def.CATALOGUE.values():  # the bound is never under the JSON: the longest value of each type
        longest = {str: "\U0001f600" * 3, bool: False, float: -sys.float_info.min}
        values = {p.name: longest[p.type] if p.type in longest else _longest_int(p.min, p.max) for p in task.params}
        assert task_calls._json_bound(task, values) >= len(json.dumps(values)), task.name


def _longest_int(low: float | None, high: float | None) -> int:
    assert low is not None and high is not None  # every integer parameter is bounded (test_task_def)
    return max(math.floor(low), math.ceil(high), key=lambda n: len(str(n)))
