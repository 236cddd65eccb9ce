"""The HTTP gateway: producers without Redis access enqueue over HTTP and get results by callback.

``create_app`` is imported on first use: the producer's ``--via`` client (``workqueue.gateway.client``)
lives in this package too, and importing the app (Flask, its routes, the OpenAPI document) cost every
``producer_main.py`` run ~0.3 s of its start-up whether it used the gateway or not."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workqueue.gateway.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from workqueue.gateway.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
