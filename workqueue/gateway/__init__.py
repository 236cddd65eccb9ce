"""The HTTP gateway: producers without Redis access enqueue over HTTP and get results by callback."""

from workqueue.gateway.app import create_app

__all__ = ["create_app"]
