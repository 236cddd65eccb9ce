"""workqueue: a Redis-backed task queue, built on RQ, with a live dashboard."""

__version__ = "0.1.0"
