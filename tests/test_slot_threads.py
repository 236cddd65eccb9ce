"""The horse's slot threads (``--concurrency``): what is raised in a job's thread (its stop, its
timeout) reaches that job only, never the next job its slot thread runs. In-process, threads only;
counts and orders, no timings asserted."""

from __future__ import annotations

import threading
from collections.abc import Callable

from workqueue.worker import horse_side


class Stopped(BaseException):
    pass


def in_a_thread(before: Callable[[int], object]) -> list[str]:
    """Run a thread that waits in one C call (so nothing raised in it is delivered meanwhile),
    call ``before(its id)``, then let it run Python code again: what it saw."""
    seen: list[str] = []
    parked, resume = threading.Event(), threading.Event()

    def target() -> None:
        try:
            parked.set()
            resume.wait(30)
            for _ in range(1000):  # Python code: a pending exception is delivered here
                pass
            seen.append("ran on")
        except Stopped:
            seen.append("stopped")

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    assert parked.wait(30)
    assert thread.ident is not None
    before(thread.ident)
    resume.set()
    thread.join(30)
    return seen


def test_an_exception_raised_in_a_thread_and_cleared_before_it_runs_on_never_arrives() -> None:
    assert in_a_thread(lambda ident: horse_side.raise_in_thread(ident, Stopped)) == ["stopped"]

    def raise_then_clear(ident: int) -> None:
        horse_side.raise_in_thread(ident, Stopped)
        horse_side.clear_raised(ident)

    assert in_a_thread(raise_then_clear) == ["ran on"]


def test_one_deadlines_thread_raises_what_is_due_and_nothing_cancelled() -> None:
    deadlines = horse_side.Deadlines()

    def due(ident: int) -> None:
        deadlines.add(0.05, ident, Stopped)
        for _ in range(600):  # bounded: until the deadlines thread has raised it (its entry gone)
            with deadlines._changed:
                if not deadlines._due:
                    return
            threading.Event().wait(0.05)

    assert in_a_thread(due) == ["stopped"]

    def cancelled(ident: int) -> None:
        number = deadlines.add(0.05, ident, Stopped)
        deadlines.add(0.05, ident, Stopped)
        deadlines.cancel(number)
        deadlines.cancel_thread(ident)
        threading.Event().wait(0.3)  # past both deadlines: neither raised (an order, not a timing: cancelled first)

    assert in_a_thread(cancelled) == ["ran on"]
    assert [t.name for t in threading.enumerate()].count("deadlines") >= 1
