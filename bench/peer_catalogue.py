"""The benchmark's body as a workqueue catalogue task, for workers started with
``WORKQUEUE_EXTRA_TASKS=bench.peer_catalogue`` (a module of its own: the catalogue imports it while
``task_def`` itself is being imported, and the peers' modules must not import ``task_def``)."""

from __future__ import annotations

from bench.peer_tasks import stamp
from task_def.registry import Param, Task

TASKS = (
    Task(
        name="bench_stamp",
        func=stamp,
        description="Benchmark body: timestamp the start and end (sleeping in between if asked).",
        params=(
            Param("tag", int, 0, "the job's number in its figure", min=0),
            Param("seconds", float, 0.0, "seconds to sleep", min=0, max=60),
        ),
        timeout=120,
        retries=0,
    ),
)
