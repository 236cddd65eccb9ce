"""/metrics: the Prometheus exposition the dashboard serves, from the counters the workers keep."""

from __future__ import annotations

import json
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

import workqueue
from tests.helpers import Processes, free_port, run_cli, wait_for


def scrape(url: str) -> dict[tuple, float]:
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).close()
        return True
    except OSError:
        return False


def test_metrics_expose_queues_registries_workers_counters_and_durations(conn, processes: Processes) -> None:
    workqueue.enqueue("sleep", {"seconds": 0.2}, count=2, queue="m")
    workqueue.enqueue("scrape", {"url": "http://127.0.0.1:1/"}, retries=0, queue="m")
    assert run_cli("consumer_main.py", "--workers", "2", "--queue", "m", "--burst").returncode == 0
    workqueue.enqueue("sleep", {"seconds": 1}, count=3, queue="m")
    port = free_port()
    processes.start("dashboard_main.py", "--port", str(port))
    url = f"http://127.0.0.1:{port}/metrics"
    wait_for(lambda: answers(url), 20, "the dashboard")
    m = scrape(url)
    assert m[("workqueue_helper_thread_up", (("name", "sweeper"),))] == 1  # the sweeper, watched
    assert m[("workqueue_helper_thread_restarts_total", (("name", "sweeper"),))] == 0
    with urllib.request.urlopen(url.replace("/metrics", "/health"), timeout=5) as response:
        health = json.load(response)
    assert health["ok"] and [(h["name"], h["up"]) for h in health["helpers"]] == [("sweeper", True)]
    assert m[("workqueue_queue_jobs", (("queue", "m"),))] == 3
    assert m[("workqueue_registry_jobs", (("queue", "m"), ("registry", "finished")))] == 2
    assert m[("workqueue_registry_jobs", (("queue", "m"), ("registry", "failed")))] == 1
    assert m[("workqueue_jobs_total", (("outcome", "finished"), ("queue", "m"), ("task", "sleep")))] == 2
    assert m[("workqueue_jobs_total", (("outcome", "failed"), ("queue", "m"), ("task", "scrape")))] == 1
    sleep = (("queue", "m"), ("task", "sleep"))
    assert m[("workqueue_job_duration_seconds_count", sleep)] == 2
    assert 0.4 <= m[("workqueue_job_duration_seconds_sum", sleep)] < 2
    assert m[("workqueue_job_duration_seconds_bucket", tuple(sorted(sleep + (("le", "0.1"),))))] == 0
    assert m[("workqueue_job_duration_seconds_bucket", tuple(sorted(sleep + (("le", "0.25"),))))] == 2
    assert m[("workqueue_workers", (("state", "busy"),))] == 0 and m[("workqueue_workers", (("state", "idle"),))] == 0
    consumer = processes.start("consumer_main.py", "--workers", "2", "--queue", "m")
    wait_for(lambda: scrape(url)[("workqueue_workers", (("state", "busy"),))] == 2, 20, "two busy workers")
    assert consumer.poll() is None
