"""The one way a task reports progress.

Tasks stay pure: they call :func:`report_progress` and know nothing of where it goes. The worker
installs a sink that stores it on the running job; outside a worker the call does nothing.
"""

from __future__ import annotations

from collections.abc import Callable

ProgressSink = Callable[[float, float, str], None]

_sink: ProgressSink | None = None


def set_sink(sink: ProgressSink | None) -> None:
    """Route progress reports to ``sink`` (the worker does this once, before forking)."""
    global _sink
    _sink = sink


def report_progress(done: float, total: float, message: str = "") -> None:
    """Report that ``done`` of ``total`` units of work are complete."""
    if _sink is not None:
        _sink(float(done), float(total), str(message))
