"""The dashboard in a real browser: Debian's headless Chromium driven by Playwright, against a real
dashboard process, real workers and jobs. Screenshots go to each test's temporary directory."""

from __future__ import annotations

import json
import shutil
import zlib
from base64 import b64encode
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from rq import Queue
from rq.job import Job

from tests.helpers import (
    Processes,
    answers,
    child_pids,
    cli_env,
    enqueue_fault,
    enqueue_jobs,
    free_port,
    status,
    wait_for,
    workers,
)
from workqueue import jobstats
from workqueue.jobs import SERIALIZER

pytestmark = pytest.mark.slow

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: No sandbox (root in a container), and none of Chromium's calls home: the network is closed.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-sync",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-dev-shm-usage",
]

XSS = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (make test installs it when run as root)")
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def dashboard(conn: redis.Redis, processes: Processes, redis_url: str) -> str:
    """A dashboard process and a consumer of 2 workers (which also run the fault tests' tasks)."""
    env = cli_env(WORKQUEUE_EXTRA_TASKS="tests.fault_tasks", REDIS_URL=redis_url)
    consumer = processes.start("consumer_main.py", "--workers", "2", "--queue", "queue_one", env=env)
    wait_for(lambda: len([w for w in workers(conn) if w.pid in child_pids(consumer)]) == 2, 20, "2 workers")
    port = free_port()
    processes.start("dashboard_main.py", "--port", str(port), env=env)
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: answers(base + "/"), 20, "the dashboard to answer")
    return base


@pytest.fixture
def page(browser, tmp_path: Path) -> Iterator[object]:
    """A fresh browser context and page; every alert() the page would show is recorded."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.dialogs = []
    page.on("dialog", lambda dialog: (page.dialogs.append(dialog.message), dialog.dismiss()))
    page.set_default_timeout(20_000)
    yield page
    context.close()


def shot(page, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 0


def _finished(conn, task: str) -> int:
    """Jobs of ``task`` counted finished in the statistics, over every queue."""
    report = jobstats.collect(conn, jobstats.queue_names(conn))
    return sum(q.tasks[task].finished for q in report if task in q.tasks)


def test_live_page_shows_progress_and_charts_and_stops_a_worker(conn, dashboard, page, tmp_path) -> None:
    for job in enqueue_jobs(conn, "pi", count=4, samples=1000):
        wait_for(lambda job=job: status(conn, job) == "finished", 20, "the quick jobs to finish")
    # the statistics the charts draw are written by each horse about once a second (tallies.Tally)
    wait_for(lambda: _finished(conn, "pi") >= 4, 10, "the statistics of the quick jobs")
    (long_job,) = enqueue_jobs(conn, seconds=30)
    page.goto(dashboard + "/")
    row = page.locator(f"#running-jobs tr[data-job-id='{long_job.id}']")
    row.locator(".wq-progress-label").filter(has_text="% sleeping").wait_for()
    page.locator("#chart-ended rect.wq-finished-bar").nth(59).wait_for(state="attached")  # /api/history answered
    assert page.locator("#chart-ended rect.wq-finished-bar").count() == 60
    heights = page.eval_on_selector_all(
        "#chart-ended rect.wq-finished-bar", "bars => bars.map(b => +b.getAttribute('height'))"
    )
    assert max(heights) > 0  # the 4 finished jobs, drawn
    page.locator("#task-stats tbody tr", has_text="pi").wait_for()
    shot(page, tmp_path, "live")

    busy = row.locator("td").nth(3).inner_text()
    idle = next(w.name for w in workers(conn) if w.name != busy)
    page.locator(f"#live-workers tr[data-worker='{idle}'] button", has_text="Stop").first.click()
    page.locator("#flashes .alert-success", has_text=f"worker {idle} asked to stop").wait_for()
    wait_for(lambda: idle not in [w.name for w in workers(conn)], 20, "the idle worker to leave")
    # After the form's reload the table first shows "Loading...": wait for it to list the one left.
    playwright_api.expect(page.locator("#live-workers tr[data-worker]")).to_have_count(1, timeout=20_000)
    assert page.locator(f"#live-workers tr[data-worker='{busy}']").count() == 1
    shot(page, tmp_path, "worker-stopped")

    page.locator(f"#running-jobs tr[data-job-id='{long_job.id}'] button", has_text="Stop").click()
    page.locator("#flashes .alert-success", has_text=f"job {long_job.id} stopped").wait_for()
    assert status(conn, long_job) == "stopped" and page.dialogs == []


def test_enqueue_form_refuses_a_bad_value_and_enqueues_a_good_one(conn, dashboard, page, tmp_path) -> None:
    page.goto(dashboard + "/enqueue")
    page.select_option("#task", "sleep")
    page.fill("input[name='sleep.seconds']", "0")
    page.click("#enqueue-submit")
    error = page.locator("#enqueue-error")
    assert error.inner_text() == "seconds: '0' is out of bounds, expected 0 < seconds <= 3,600"
    assert page.input_value("input[name='sleep.seconds']") == "0"  # what was typed, kept
    shot(page, tmp_path, "enqueue-refused")
    assert not conn.keys("rq:job:*")

    page.select_option("#task", "primes")
    assert page.locator("fieldset[data-task='sleep']").is_hidden()
    page.fill("input[name='primes.n']", "5000")
    page.fill("#count", "3")
    page.click("#enqueue-submit")
    page.locator("#flashes .alert-success", has_text="enqueued 3 × primes(n=5000) on queue_one").wait_for()
    shot(page, tmp_path, "enqueued")
    wait_for(lambda: Queue("queue_one", connection=conn).finished_job_registry.count == 3, 20, "the 3 jobs to finish")


def test_job_text_with_html_renders_as_text(conn, dashboard, page, tmp_path) -> None:
    job = enqueue_fault(conn, "raise_error", message=XSS)
    wait_for(lambda: status(conn, job) == "failed", 20, "the job to fail")
    page.goto(f"{dashboard}/jobs/{job.id}")
    page.locator("[data-field=error]", has_text=XSS).wait_for()
    assert XSS in page.locator("[data-field=description]").inner_text()
    assert page.locator("#job-page script").count() == 0
    assert page.locator("#stop-job-form").is_hidden() and page.locator("#requeue-job-form").is_visible()
    # The same job in rq-dashboard's own failed-jobs list, and found through the search box.
    page.goto(f"{dashboard}/rq/0/view/jobs/queue_one/failed/8/asc/1")
    page.locator("#jobs .exc_info", has_text=XSS).wait_for()
    shot(page, tmp_path, "rq-dashboard-failed-jobs")
    # Its own requeue button posts by XHR, with the token from our cookie: accepted.
    page.locator(f"tr[data-job-id='{job.id}'] [data-role=requeue-job-btn]").click()
    wait_for(
        lambda: Job.fetch(job.id, connection=conn, serializer=SERIALIZER).meta.get("requeued_by"),
        10,
        "rq-dashboard's requeue to go through",
    )
    assert Job.fetch(job.id, connection=conn, serializer=SERIALIZER).meta["requeued_by"] == ["dashboard (127.0.0.1)"]
    page.fill("#job-search input[name=id]", job.id)
    page.press("#job-search input[name=id]", "Enter")
    page.wait_for_url(f"**/jobs/{job.id}")
    shot(page, tmp_path, "xss-as-text")
    assert page.dialogs == []


def test_state_changes_without_the_csrf_token_are_refused(conn, dashboard, page, tmp_path) -> None:
    (job,) = enqueue_jobs(conn, "sleep", queue="queue_two", seconds=5)  # no worker listens on queue_two
    page.goto(dashboard + "/")
    without = page.evaluate(f"fetch('/jobs/{job.id}/stop', {{method: 'POST'}}).then(r => r.status)")
    assert without == 400 and status(conn, job) == "queued"
    # Another site's page posting a form to the dashboard: no token, and no cookies (SameSite).
    page.set_content(f"<form method=post action='{dashboard}/jobs/{job.id}/stop'><button>go</button></form>")
    with page.expect_navigation():
        page.click("button")
    assert "CSRF" in page.content() and status(conn, job) == "queued"
    shot(page, tmp_path, "csrf-refused")
    page.goto(dashboard + "/")
    token = page.get_attribute("#wq-config", "data-csrf")
    with_token = page.evaluate(
        f"fetch('/jobs/{job.id}/stop', {{method: 'POST', headers: {{'X-CSRFToken': {token!r}}}}}).then(r => r.status)"
    )
    assert with_token == 200 and status(conn, job) == "canceled"


# Hostile names and fields, from a foreign Redis client ----------------------------------------------

#: Each sets the marker global (or shows a dialog) if it ever runs; each in a different context.
PAYLOADS = [
    "x');window.__pwned=1;//",
    "</script><script>window.__pwned=1</script>",
    '"><img src=x onerror=window.__pwned=1>',
    "x');alert(1);//",
    "</script><script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "${window.__pwned=1}",
    "<%= window.__pwned=1 %>",
    "x');window.__pwned=1;('",
]


def hostile_job(conn: redis.Redis, job_id: str, queue: str, registry: str, text: str) -> None:
    """A job of ours copied under ``job_id``, every text field of it ``text``, in ``registry``."""
    (model,) = enqueue_jobs(conn, "primes", queue="scratch", n=10)
    fields = conn.hgetall(model.key)
    Queue("scratch", connection=conn).empty()
    fields.update(
        {
            b"origin": queue.encode(),
            b"description": text.encode(),
            b"meta": json.dumps(
                {"task": text, "note": text, "progress": {"percent": 50, "done": 1, "total": 2, "message": text}}
            ).encode(),
            b"status": {"queued": b"queued", "failed": b"failed", "finished": b"finished"}[registry],
        }
    )
    conn.hset(f"rq:job:{job_id}", mapping=fields)
    conn.sadd("rq:queues", f"rq:queue:{queue}")
    if registry == "queued":
        conn.rpush(f"rq:queue:{queue}", job_id)
    else:
        conn.zadd(f"rq:{registry}:{queue}", {job_id: 9999999999})
        payload = (
            {"type": 2, "exc_string": b64encode(zlib.compress(text.encode())).decode()}
            if registry == "failed"
            else {"type": 1, "return_value": b64encode(json.dumps(text).encode()).decode()}
        )
        conn.xadd(f"rq:results:{job_id}", {"worker_name": "", **payload})


@pytest.fixture
def bare_dashboard(conn: redis.Redis, processes: Processes, redis_url: str) -> str:
    """A dashboard process alone (no worker)."""
    port = free_port()
    processes.start("dashboard_main.py", "--port", str(port), env=cli_env(REDIS_URL=redis_url))
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: answers(base + "/"), 20, "the dashboard to answer")
    return base


def test_hostile_queue_names_job_fields_and_url_segments_run_no_script(conn, bare_dashboard, page, tmp_path) -> None:
    base = bare_dashboard
    queues = [f"q{i}{p}" for i, p in enumerate(PAYLOADS)]
    for i, (queue, text) in enumerate(zip(queues, PAYLOADS)):
        for registry in ("queued", "failed", "finished"):
            hostile_job(conn, f"job{i}-{registry}", queue, registry, text)
    hostile_job(conn, 'id"><img src=x onerror=window.__pwned=1>', queues[0], "failed", PAYLOADS[1])
    violations: list[str] = []
    page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    page.add_init_script("window.alert = window.confirm = window.prompt = function () { window.__pwned = 1; };")

    def check(url: str, ready: str | None = None) -> None:
        page.goto(url)
        if ready:
            page.locator(ready).first.wait_for()
        page.wait_for_timeout(300)  # let the page's scripts and any injected one run
        assert page.evaluate("window.__pwned") is None, url
        assert page.dialogs == [] and violations == [], (url, violations)

    check(base + "/rq/0/view/queues", "#queues tr[data-role=queue]")
    playwright_api.expect(page.locator("#queues tr[data-role=queue]")).to_have_count(len(queues) + 1)
    for queue in queues:  # shown as text
        assert page.locator("#queues td", has_text=queue).count() >= 1, queue
    shot(page, tmp_path, "hostile-queues")
    page.locator("#queues tr[data-role=queue]", has_text=queues[2]).locator("a").nth(5).click()  # its failed jobs
    page.locator("#jobs tr[data-role=job]").first.wait_for()
    assert page.evaluate("window.__pwned") is None and violations == []
    for queue in queues:
        # A name with a "/" has no jobs page (the server decodes %2F before routing): no rows to wait for.
        routable = "/" not in queue
        for registry, order in (("queued", "asc"), ("failed", "dsc"), ("finished", "asc")):
            check(
                f"{base}/rq/0/view/jobs/{quote(queue, safe='')}/{registry}/8/{order}/1",
                "#jobs tr[data-role=job]" if routable else None,
            )
            if routable:
                assert page.input_value("#select-queue") == queue
        if not routable:
            continue
        page.click("#select-queue")  # emptied; leaving it puts the name back: rq-dashboard wrote it into a script
        page.mouse.move(0, 0)
        page.wait_for_timeout(100)
        assert page.evaluate("window.__pwned") is None
    check(f"{base}/rq/0/view/jobs/{quote(queues[2], safe='')}/failed/8/asc/1", "#jobs .exc_info")
    assert page.locator("#jobs .exc_info").first.inner_text() == PAYLOADS[2]  # the text, as text
    assert page.locator("#jobs .description").first.inner_text() == PAYLOADS[2]
    shot(page, tmp_path, "hostile-jobs")
    for i in range(len(PAYLOADS)):
        check(f"{base}/jobs/job{i}-failed", "#job-page [data-field=error]")
        assert page.locator("[data-field=description]").inner_text() == PAYLOADS[i]
        check(f"{base}/jobs/job{i}-finished", "#job-page [data-field=result]")
    for segment in PAYLOADS:  # hostile URL segments, where rq-dashboard put them into its scripts
        s = quote(segment, safe="")
        for url in (
            f"/rq/0/view/jobs/{s}/queued/8/asc/1",
            f"/rq/0/view/jobs/q/{s}/8/asc/1",
            f"/rq/0/view/jobs/q/queued/8/{s}/1",
            f"/jobs/{s}",
            f"/jobs?id={s}",
            f"/rq/0/view/job/{s}",
        ):
            check(base + url)
    check(base + "/", "#live-workers tbody tr")
    check(base + "/rq/0/view/workers", "#live-workers tbody tr")
    check(base + "/enqueue", "#enqueue-form")
    page.fill("#queue", PAYLOADS[2])
    page.click("#enqueue-submit")
    page.locator("#enqueue-error").wait_for()
    assert page.evaluate("window.__pwned") is None and page.input_value("#queue") == PAYLOADS[2]
    assert page.dialogs == [] and violations == []
