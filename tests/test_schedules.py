"""Periodic schedules against a real redis-server and real consumer processes: each tick fires
exactly once however many consumers run, a SIGKILLed firer does not stop the ticks, missed ticks
give one catch-up run, pause stops firing, the schedule file applies idempotently, and bad input
is refused with one line and exit 2, nothing written. Counts are asserted, never timings."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import redis

from tests.helpers import ROOT, Processes, run_cli, start_consumer, wait_for
from workqueue import schedule_firing, schedules
from workqueue.replies import decoded, decoded_map
from workqueue.schedule_firing import Firer
from workqueue.schedules import Schedule


def cli(*args: str) -> subprocess.CompletedProcess:
    """``python -m workqueue schedule ARGS`` with no terminal, to completion."""
    return subprocess.run(
        [sys.executable, "-m", "workqueue", "schedule", *args], cwd=ROOT, env=dict(os.environ),
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def every(name: str, interval: str = "1s", queue: str = "ticks") -> Schedule:
    return Schedule.build(name, every=interval, task="sleep", params={"seconds": 0.01}, queue=queue)


def batch_ids(conn: redis.Redis, queue: str) -> list[str]:
    """The batches enqueued on ``queue``, from their records in Redis."""
    found = []
    for raw in conn.scan_iter("workqueue:batch:*"):
        name = decoded(raw)
        if name.count(":") == 2 and conn.hget(name, "queue") == queue.encode():
            found.append(name.rsplit(":", 1)[1])
    return sorted(found)


def schedule_keys(conn: redis.Redis) -> dict[str, dict[str, str]]:
    """Every schedule key and what it holds: to show that refused input wrote nothing."""
    return {decoded(k): decoded_map(conn.hgetall(k)) if conn.type(k) == b"hash" else {}
            for k in conn.scan_iter("workqueue:schedule*")}  # fmt: skip


# -- once per tick, with several consumers -------------------------------------------------------


@pytest.mark.slow
def test_three_consumers_and_a_one_second_schedule_fire_each_tick_once(conn: redis.Redis, processes: Processes) -> None:
    for _ in range(3):
        start_consumer(processes, conn, 1, "ticks")
    schedules.add(conn, every("tick"))
    time.sleep(10)
    schedules.set_paused(conn, "tick", True)
    time.sleep(1.5)  # a tick claimed just before the pause gets its batch
    fired = schedule_firing.history(conn, "tick")
    ticks = [f.tick for f in fired]
    assert len(set(ticks)) == len(ticks), "two batches for one tick"
    assert all(t == int(t) for t in ticks)
    enqueued = batch_ids(conn, "ticks")
    assert sorted(f.batch_id for f in fired) == enqueued
    assert 9 <= len(enqueued) <= 11
    assert schedules.get(conn, "tick").fired == len(enqueued)


@pytest.mark.slow
def test_sigkilling_the_consumer_that_fired_the_last_tick_does_not_stop_the_ticks(
    conn: redis.Redis, processes: Processes
) -> None:
    consumers = {c.pid: c for c in (start_consumer(processes, conn, 1, "ticks") for _ in range(3))}
    schedules.add(conn, every("tick"))
    wait_for(lambda: len(schedule_firing.history(conn, "tick")) >= 2, 20, "two ticks")
    firer = schedule_firing.history(conn, "tick")[0].by
    pid = int(firer.rsplit(".", 1)[1])
    assert pid in consumers
    os.kill(pid, signal.SIGKILL)
    consumers[pid].wait(10)
    killed_at = schedules.redis_now(conn)

    def after_the_kill() -> list[schedule_firing.Fired]:
        return [f for f in schedule_firing.history(conn, "tick") if f.tick > killed_at]

    wait_for(lambda: len(after_the_kill()) >= 4, 20, "four ticks after the kill")
    later = after_the_kill()
    assert firer not in {f.by for f in later}
    assert len({f.tick for f in later}) == len(later)


def test_many_consumers_claiming_the_same_due_tick_at_once_fire_it_once(conn: redis.Redis) -> None:
    schedules.add(conn, every("race"))
    time.sleep(1.2)  # a tick is due
    start = threading.Barrier(20)
    fired: list[schedule_firing.Fired] = []

    def consumer(n: int) -> None:
        firer = Firer(redis.Redis.from_url(os.environ["REDIS_URL"]), name=f"c{n}")
        start.wait(10)
        fired.extend(firer.fire_due())

    threads = [threading.Thread(target=consumer, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(fired) == len({f.tick for f in fired}) >= 1
    assert len(batch_ids(conn, "ticks")) == len(fired) == schedules.get(conn, "race").fired


def test_a_tick_claimed_by_a_consumer_that_died_before_enqueueing_is_enqueued_once_by_another(
    conn: redis.Redis,
) -> None:
    schedules.add(conn, every("orphan", "1h"))
    stored = schedules.get(conn, "orphan")
    now = schedules.redis_now(conn)
    tick = stored.schedule.when.latest_tick(now)
    conn.hset(schedules.key("orphan"), "since", repr(tick - 1))  # make the current tick due
    claim = (schedules.key("orphan"), schedules.history_key("orphan"), repr(tick), "lostbatch001", repr(now))
    assert conn.eval(schedule_firing._CLAIM, 2, *claim, stored.version, "dead.1", 100) == 1  # ... and then it died
    assert Firer(conn).fire_due() == [] and batch_ids(conn, "ticks") == []  # within the grace: its claimer may be at it
    conn.hset(schedules.key("orphan"), "pending_at", repr(now - schedule_firing.PENDING_GRACE))  # the grace is over
    assert Firer(conn).fire_due() == []  # no new tick: the claimed one's batch
    assert batch_ids(conn, "ticks") == ["lostbatch001"]
    assert schedules.get(conn, "orphan").pending is None
    conn.hset(schedules.key("orphan"), mapping={"pending": "lostbatch001", "pending_at": repr(now - 60)})
    Firer(conn).fire_due()  # pending again, but the batch exists: not enqueued twice
    assert batch_ids(conn, "ticks") == ["lostbatch001"] and schedules.get(conn, "orphan").pending is None


# -- missed ticks, pause, burst ------------------------------------------------------------------


def test_ticks_missed_while_no_consumer_ran_give_one_catch_up_run(conn: redis.Redis) -> None:
    schedules.add(conn, every("catch"))
    time.sleep(3.5)  # three ticks or more go by with no consumer
    first = Firer(conn, name="one").fire_due()
    assert len(first) == 1
    stored = schedules.get(conn, "catch")
    assert first[0].tick == stored.last_tick > stored.since + 2  # the latest tick; the two or more before it skipped
    again = Firer(conn, name="two").fire_due()  # another consumer looking just after: nothing it already fired
    assert all(f.tick > first[0].tick for f in again)
    assert len(batch_ids(conn, "ticks")) == 1 + len(again)


def test_a_schedule_this_consumer_cannot_fire_is_left_to_others_and_the_rest_fire(conn: redis.Redis) -> None:
    schedules.add(conn, every("good"))
    schedules.add(conn, every("gone"))
    schedules.add(conn, every("zone"))
    conn.hset(schedules.key("gone"), "task", "no_such_task")  # as a consumer with another catalogue sees it
    conn.hset(schedules.key("zone"), mapping={"kind": "cron", "spec": "* * * * * *", "tz": "Nowhere/Land"})
    time.sleep(1.2)
    fired = Firer(conn).fire_due()
    assert [f.name for f in fired] == ["good"]
    assert schedules.get(conn, "gone").fired == schedules.get(conn, "zone").fired == 0  # unclaimed, for others


@pytest.mark.slow
def test_a_paused_schedule_fires_nothing_and_resumes_without_replaying(conn: redis.Redis, processes: Processes) -> None:
    start_consumer(processes, conn, 1, "ticks")
    result = cli("add", "sec", "--cron", "* * * * * *", "--tz", "Europe/Paris", "--task", "sleep",
                 "--param", "seconds=0.01", "--queue", "ticks")  # fmt: skip
    assert result.returncode == 0, result.stderr
    wait_for(lambda: schedules.get(conn, "sec").fired >= 2, 20, "two ticks of a six-field cron")
    assert cli("pause", "sec").returncode == 0
    time.sleep(1)  # a claim made just before the pause finishes
    fired, enqueued = schedules.get(conn, "sec").fired, len(batch_ids(conn, "ticks"))
    time.sleep(3)
    assert (schedules.get(conn, "sec").fired, len(batch_ids(conn, "ticks"))) == (fired, enqueued)
    assert cli("resume", "sec").returncode == 0
    resumed = schedules.get(conn, "sec").since
    wait_for(lambda: schedules.get(conn, "sec").fired > fired, 20, "a tick after resume")
    since_resume = schedule_firing.history(conn, "sec")[: schedules.get(conn, "sec").fired - fired]
    assert all(f.tick > resumed for f in since_resume)  # none of the ticks missed while paused


def test_a_burst_consumer_fires_no_schedule(conn: redis.Redis) -> None:
    schedules.add(conn, every("tick"))
    time.sleep(1.2)
    result = run_cli("consumer_main.py", "--workers", "1", "--queue", "ticks", "--burst")
    assert result.returncode == 0, result.stderr
    assert schedules.get(conn, "tick").fired == 0 and batch_ids(conn, "ticks") == []


# -- the command line ----------------------------------------------------------------------------


def test_add_list_run_now_replace_and_remove(conn: redis.Redis) -> None:
    added = cli("add", "nightly", "--cron", "0 3 * * *", "--tz", "Europe/Paris", "--task", "sleep",
                "--param", "seconds=1", "--queue", "ticks")  # fmt: skip
    assert added.returncode == 0, added.stderr
    ran = cli("run-now", "nightly")
    assert ran.returncode == 0, ran.stderr
    batch = ran.stdout.split()[-1]
    assert batch_ids(conn, "ticks") == [batch]
    listed = cli("list")
    assert listed.returncode == 0, listed.stderr
    assert "nightly  cron 0 3 * * * (Europe/Paris)  sleep(seconds=1.0) -> ticks  active" in listed.stdout
    assert " 03:00:00 CE" in listed.stdout and f"batch {batch}: running (0 of 1 ended)" in listed.stdout
    assert "fired 0 ticks, run now 1 times" in listed.stdout
    replaced = cli("add", "nightly", "--every", "1h", "--task", "sleep", "--queue", "other", "--replace")
    assert replaced.returncode == 0, replaced.stderr
    stored = schedules.get(conn, "nightly")
    assert (stored.schedule.when.describe(), stored.schedule.queue, stored.last_batch) == ("every 1h", "other", batch)
    assert cli("remove", "nightly").returncode == 0
    assert schedule_keys(conn) == {}


def test_apply_is_idempotent_prunes_only_when_asked_and_a_bad_file_changes_nothing(
    conn: redis.Redis, tmp_path: Path
) -> None:
    schedules.add(conn, every("manual", "1h"))
    good = tmp_path / "schedules.toml"
    good.write_text((ROOT / "schedules.example.toml").read_text())
    first = cli("apply", str(good))
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("created: ")
    before = schedule_keys(conn)
    second = cli("apply", str(good))
    assert second.returncode == 0 and "nothing to change" in second.stdout
    assert schedule_keys(conn) == before
    assert "workqueue:schedule:manual" in before
    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text().replace('every = "10m"', 'every = "10m"\ncron = "* * * * *"'))
    refused = cli("apply", "--prune", str(bad))
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert schedule_keys(conn) == before
    pruned = cli("apply", "--prune", str(good))
    assert pruned.returncode == 0 and "removed: manual" in pruned.stdout
    assert set(schedule_keys(conn)) == set(before) - {"workqueue:schedule:manual"}


BAD_INPUT = [
    (["add", "x", "--cron", "61 * * * *", "--task", "sleep", "--queue", "q"], "not a valid cron expression"),
    (["add", "x", "--cron", "* * *", "--task", "sleep", "--queue", "q"], "expected 5 fields"),
    (["add", "x", "--cron", "0 0 31 2 *", "--task", "sleep", "--queue", "q"], "not a valid cron expression"),
    (["add", "x", "--cron", "* * * * *", "--tz", "Mars/Base", "--task", "sleep", "--queue", "q"], "unknown time zone"),
    (["add", "x", "--every", "2s", "--tz", "UTC", "--task", "sleep", "--queue", "q"], "--tz goes with --cron only"),
    (["add", "x", "--every", "1s", "--cron", "* * * * *", "--task", "sleep", "--queue", "q"], "exactly one of"),
    (["add", "x", "--task", "sleep", "--queue", "q"], "exactly one of"),
    (["add", "x", "--every", "0", "--task", "sleep", "--queue", "q"], "between 1 s and 366 days"),
    (["add", "x", "--every", "soon", "--task", "sleep", "--queue", "q"], "expected a number and a unit"),
    (["add", "x", "--every", "1s", "--task", "nope", "--queue", "q"], "unknown task 'nope'"),
    (["add", "x", "--every", "1s", "--task", "sleep", "--param", "seconds=-1", "--queue", "q"], "out of bounds"),
    (["add", "x", "--every", "1s", "--task", "sleep", "--param", "nope=1", "--queue", "q"], "nope"),
    (["add", "x", "--every", "1s", "--task", "sleep", "--queue", "bad queue"], "invalid queue name"),
    (["add", "x", "--every", "1s", "--task", "sleep"], "Missing option '--queue'"),
    (["add", "bad name", "--every", "1s", "--task", "sleep", "--queue", "q"], "invalid schedule name"),
    (["add", "kept", "--every", "1s", "--task", "sleep", "--queue", "q"], "exists; give --replace"),
    (["remove", "nope"], "no schedule named 'nope' (the schedules are: kept, still)"),
    (["pause", "nope"], "no schedule named 'nope'"),
    (["resume", "nope"], "no schedule named 'nope'"),
    (["run-now", "nope"], "no schedule named 'nope'"),
    (["pause", "still"], "already paused"),
    (["resume", "kept"], "already running"),
    (["apply", "/nonexistent/schedules.toml"], "cannot read"),
]


@pytest.mark.parametrize("args,message", BAD_INPUT, ids=[" ".join(a)[:60] for a, _ in BAD_INPUT])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(conn: redis.Redis, args: list[str], message: str) -> None:
    schedules.add(conn, every("kept", "1h"))
    schedules.add(conn, every("still", "1h"))
    schedules.set_paused(conn, "still", True)
    before = schedule_keys(conn)
    result = cli(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr
    assert schedule_keys(conn) == before
    assert batch_ids(conn, "q") == []


def test_bad_files_are_refused_whole(conn: redis.Redis, tmp_path: Path) -> None:
    cases = {
        "not toml": "[schedules.a\n",
        "unknown key": '[schedules.a]\nevery = "1s"\ntask = "sleep"\nqueue = "q"\nwhen = 3\n',
        "no task": '[schedules.a]\nevery = "1s"\nqueue = "q"\n',
        "bad second": '[schedules.a]\nevery = "1s"\ntask = "sleep"\nqueue = "q"\n'
        '[schedules.b]\ncron = "* * * * *"\ntz = "Nowhere/Land"\ntask = "sleep"\nqueue = "q"\n',
        "other table": '[jobs.a]\ntask = "sleep"\n',
    }
    for what, text in cases.items():
        path = tmp_path / f"{what.replace(' ', '_')}.toml"
        path.write_text(text)
        result = cli("apply", str(path))
        assert result.returncode == 2 and result.stderr.count("\n") == 1, (what, result.stderr)
        assert str(path) in result.stderr
    assert schedule_keys(conn) == {}


# -- the model -----------------------------------------------------------------------------------


def test_six_field_cron_has_the_seconds_first_and_keeps_its_time_zone() -> None:
    when = schedules.When.cron("*/20 30 9 * * *", "America/New_York")
    ny = 1_795_000_000.0  # any instant: the ticks must be 09:30:00, :20 and :40 in New York
    tick = when.next_tick(ny)
    local = datetime.fromtimestamp(tick, ZoneInfo("America/New_York"))
    assert (local.hour, local.minute, local.second) == (9, 30, 0)
    assert when.next_tick(tick) - tick == 20
    assert schedules.When.every("10m").latest_tick(1_000_000_123.0) == 999_999_600.0  # counted from the epoch


# -- the other interfaces ------------------------------------------------------------------------


def test_gateway_adds_lists_pauses_runs_and_removes_schedules_as_its_document_says(conn: redis.Redis) -> None:
    import schemathesis

    from workqueue.gateway import create_app

    schema = schemathesis.openapi.from_wsgi("/openapi.json", create_app(conn))
    ops = {op.label: op for op in (result.ok() for result in schema.get_all_operations())}

    def call(label: str, status: int, body: object = None, name: str | None = None) -> dict:
        extra = {"body": body} if body is not None else {}
        case = ops[label].Case(path_parameters={"name": name} if name else {}, **extra)
        response = case.call_and_validate()
        assert response.status_code == status, (label, response.text)
        return response.json()

    body = {"name": "g", "every": "1h", "task": "sleep", "params": {"seconds": 1}, "queue": "ticks"}
    assert call("POST /schedules", 201, body)["outcome"] == "created"
    refused = call("POST /schedules", 422, body)
    assert refused["field"] == "name" and "--replace" in refused["error"]
    assert call("POST /schedules", 201, {**body, "replace": True})["outcome"] == "unchanged"
    for bad, field in [
        ({"cron": "61 * * * *"}, "cron"),
        ({"every": "0"}, "every"),
        ({"params": {"seconds": -1}}, "params.seconds"),
    ]:
        assert call("POST /schedules", 422, {**body, "name": "h", **bad})["field"] == field
    cron = {**body, "name": "c", "cron": "0 3 * * *", "tz": "Europe/Paris"}
    del cron["every"]
    assert call("POST /schedules", 422, {**cron, "tz": "Nowhere/Land"})["field"] == "tz"
    assert call("POST /schedules", 201, cron)["schedule"]["next_run"].endswith("+00:00")
    listed = call("GET /schedules", 200)["schedules"]
    assert [s["name"] for s in listed] == ["c", "g"] and listed[1]["last_outcome"] == "never run"
    assert call("POST /schedules/{name}/pause", 200, {}, "g")["paused"] is True
    assert "already paused" in call("POST /schedules/{name}/pause", 422, {}, "g")["error"]
    assert call("POST /schedules/{name}/resume", 200, {}, "g")["paused"] is False
    batch = call("POST /schedules/{name}/run-now", 201, {}, "g")["batch_id"]
    assert call("GET /schedules/{name}", 200, name="g")["last_batch"] == batch == batch_ids(conn, "ticks")[0]
    assert call("DELETE /schedules/{name}", 200, name="g")["message"] == "schedule g: removed"
    assert call("GET /schedules/{name}", 404, name="g")["field"] == "name"
    assert schedules.names(conn) == ["c"]


def test_python_api_schedules(conn: redis.Redis) -> None:
    import workqueue

    api = workqueue.Schedules()
    assert api.add("p", "sleep", {"seconds": 1}, every="10m", queue="ticks") == "created"
    with pytest.raises(workqueue.errors.BadInput, match="unknown time zone"):
        api.add("q", "sleep", cron="* * * * *", tz="Nowhere/Land")
    api.pause("p")
    assert [(s.name, s.paused) for s in api.all()] == [("p", True)]
    api.resume("p")
    batch = api.run_now("p")
    assert batch_ids(conn, "ticks") == [batch]
    api.remove("p")
    assert api.all() == []


def test_the_gateway_document_has_the_schedule_paths(conn: redis.Redis) -> None:
    from workqueue.gateway import openapi

    paths = openapi.document()["paths"]
    assert {p for p in paths if p.startswith("/schedules")} == {
        "/schedules", "/schedules/{name}", "/schedules/{name}/pause", "/schedules/{name}/resume",
        "/schedules/{name}/run-now",
    }  # fmt: skip


def test_dashboard_lists_schedules_and_pauses_resumes_and_runs_them_with_the_csrf_token(conn: redis.Redis) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from tests.helpers import client_for, token

    schedules.add(conn, Schedule.build("dash.1", every="10m", task="sleep", params={"seconds": 1}, queue="ticks"))
    client = client_for(os.environ["REDIS_URL"])
    page = client.get("/schedules")
    assert page.status_code == 200
    assert "dash.1" in page.text and "every 10m" in page.text and "never run" in page.text
    assert 'href="/schedules"' in client.get("/").text  # in the navigation
    assert "<script>" not in page.text.split("</head>")[1].replace("<script src=", "")
    assert client.post("/schedules/dash.1/pause").status_code == 400  # no CSRF token
    assert not schedules.get(conn, "dash.1").paused
    csrf = {"csrf_token": token(client)}
    html = {"Accept": "text/html", "Referer": "http://localhost/schedules"}
    paused = client.post("/schedules/dash.1/pause", data=csrf, headers=html)
    assert paused.status_code == 303 and paused.headers["Location"] == "/schedules"
    assert "schedule dash.1 paused" in client.get("/schedules").text  # the flashed outcome
    assert schedules.get(conn, "dash.1").paused
    assert "Resume" in client.get("/schedules").text
    again = client.post("/schedules/dash.1/pause", data=csrf, headers={"Accept": "application/json"})
    assert again.status_code == 404 and "already paused" in again.json["messages"][0]
    assert client.post("/schedules/dash.1/resume", data=csrf, headers=html).status_code == 303
    assert client.post("/schedules/dash.1/run-now", data=csrf, headers=html).status_code == 303
    stored = schedules.get(conn, "dash.1")
    assert not stored.paused and batch_ids(conn, "ticks") == [stored.last_batch]
    assert stored.last_batch in client.get("/schedules").text
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    samples = {(s.name, s.labels.get("schedule")): s.value for f in families.values() for s in f.samples}
    assert samples[("workqueue_schedule_paused", "dash.1")] == 0
    assert samples[("workqueue_schedule_fired_total", "dash.1")] == 0
    assert samples[("workqueue_schedule_run_now_total", "dash.1")] == 1
    assert samples[("workqueue_schedule_last_run_timestamp_seconds", "dash.1")] == stored.last_run
    assert samples[("workqueue_schedule_next_run_timestamp_seconds", "dash.1")] % 600 == 0
