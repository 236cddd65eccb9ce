"""The dashboard command: rq-dashboard on loopback against the resolved Redis, reading JSON jobs."""

from __future__ import annotations

import json
import urllib.request

import redis

from tests.conftest import Processes, free_port, wait_for
from workqueue import producer


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read()


def answers(url: str) -> bool:
    try:
        return get(url)[0] == 200
    except OSError:
        return False


def test_dashboard_serves_rq_dashboard_with_our_json_jobs(conn: redis.Redis, processes: Processes) -> None:
    (job,) = producer.enqueue(conn, [producer.TaskCall.build("sleep", {"seconds": 1})], "queue_one").jobs
    port = free_port()
    processes.start("dashboard_main.py", "--port", str(port))
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: answers(base + "/"), 20, "the dashboard to answer")
    status, page = get(base + "/")
    assert status == 200 and b"<title>RQ dashboard" in page
    queues = json.loads(get(base + "/rq/0/data/queues.json")[1])["queues"]
    assert [(q["name"], q["count"]) for q in queues] == [("queue_one", 1)]
    info = json.loads(get(f"{base}/rq/0/data/job/{job.id}.json")[1])
    assert info["description"] == "sleep(seconds=1.0)"


def test_dashboard_listens_on_loopback_by_default(conn: redis.Redis, processes: Processes) -> None:
    import psutil

    port = free_port()
    dashboard = processes.start("dashboard_main.py", "--port", str(port))
    wait_for(lambda: answers(f"http://127.0.0.1:{port}/"), 20, "the dashboard to answer")
    listening = [c.laddr for c in psutil.Process(dashboard.pid).net_connections() if c.status == "LISTEN"]
    assert [(a.ip, a.port) for a in listening] == [("127.0.0.1", port)]
