"""The dashboard on :9181: rq-dashboard plus live work, history, controls and metrics, safe to expose."""

from workqueue.dashboard.app import create_app

__all__ = ["create_app"]
