"""Huey's side of ``bench/run.py``: a RedisHuey on ``$REDIS_URL`` (blocking reads, its defaults) and one task
around the shared body. Run as ``huey_consumer bench.peer_huey.huey -w 2 -k process``."""

from __future__ import annotations

import os

from huey import RedisHuey

from bench.peer_tasks import stamp

huey = RedisHuey("bench", url=os.environ["REDIS_URL"])


@huey.task()
def bench_stamp(tag: int = 0, seconds: float = 0.0) -> None:
    stamp(tag, seconds)
