"""workqueue: a Redis-backed task queue, built on RQ, with a live dashboard.

The Python API (see ``workqueue.api``): :func:`enqueue`, :func:`enqueue_many`, :func:`stats`, :func:`results`,
and the :class:`Batch` they return, with ``wait(on_task=..., on_done=..., timeout=...)``;
:class:`Schedules` for periodic schedules; per-key limits: :func:`set_limit`, :func:`remove_limit`,
:func:`list_limits`.
"""

__version__ = "0.1.0"

__all__ = [
    "Batch",
    "Schedules",
    "enqueue",
    "enqueue_many",
    "list_limits",
    "remove_limit",
    "results",
    "set_limit",
    "stats",
]


def __getattr__(name: str):
    # Lazy, so that `python -m workqueue` and the task catalogue do not import RQ for nothing.
    if name in __all__:
        from workqueue import api

        value = globals()[name] = getattr(api, name)  # found directly from now on, not through here each call
        return value
    raise AttributeError(name)
