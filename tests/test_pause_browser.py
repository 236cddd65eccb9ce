"""Pausing and resuming a queue from the dashboard's live page, in a real browser (see test_browser)."""

from __future__ import annotations

import pytest

from tests import test_browser
from tests.helpers import enqueue_jobs
from workqueue import pausing

pytestmark = pytest.mark.slow

# The browser tests' fixtures (a Chromium, a dashboard with a consumer, a page), shared.
browser, dashboard, page = test_browser.browser, test_browser.dashboard, test_browser.page


def test_the_live_page_pauses_and_resumes_a_queue_and_shows_waiting_jobs_per_level(
    conn,
    dashboard,
    page,
    tmp_path,
) -> None:
    pausing.pause(conn, "queue_one")
    enqueue_jobs(conn, "pi", count=2, samples=1000)
    page.goto(dashboard + "/")
    row = page.locator("#live-queues tr[data-queue='queue_one']")
    row.locator(".badge", has_text="paused").wait_for()
    assert "normal 2" in row.inner_text()
    row.locator("button", has_text="Resume").click()
    page.locator("#flashes .alert-success", has_text="queue queue_one resumed").wait_for()
    assert not pausing.is_paused(conn, "queue_one")
    page.locator("#live-queues tr[data-queue='queue_one'] button", has_text="Pause").click()
    page.locator("#flashes .alert-success", has_text="queue queue_one paused").wait_for()
    assert pausing.is_paused(conn, "queue_one") and page.dialogs == []
    test_browser.shot(page, tmp_path, "queue-paused")
