"""Dramatiq's side of ``bench/run.py``: a Redis broker on ``$REDIS_URL`` (its default middleware) and one
actor around the shared body. Run as ``dramatiq bench.peer_dramatiq -p 2 -t 8``."""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from bench.peer_tasks import stamp

QUEUE = "bench"

dramatiq.set_broker(RedisBroker(url=os.environ["REDIS_URL"]))


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def bench_stamp(tag: int = 0, seconds: float = 0.0) -> None:
    stamp(tag, seconds)
