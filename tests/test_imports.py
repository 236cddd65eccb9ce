"""Importing workqueue or task_def does nothing but define things: RQ stays RQ's, no sink, no thread."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Runs in a fresh interpreter: snapshots RQ's modules, imports the public API and every module of
# both packages (but ``__main__``, which is a script), then reports what changed.
_PROBE = r"""
import importlib, json, pkgutil, sys, threading
import rq, rq.job, rq.queue, rq.registry, rq.results, rq.serializers, rq.worker, rq.scheduler, rq.worker_pool

WATCHED = (rq.job, rq.queue, rq.registry, rq.results, rq.worker, rq.scheduler, rq.worker_pool, rq.serializers)
before = {m.__name__: dict(vars(m)) for m in WATCHED}
classes = {}
for m in WATCHED:
    for name, value in vars(m).items():
        if isinstance(value, type) and value.__module__.startswith("rq"):
            classes[f"{m.__name__}.{name}"] = (value, dict(vars(value)))

import workqueue, task_def
workqueue.enqueue, workqueue.stats
imported = []
for package in (workqueue, task_def):
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if info.name.rsplit(".", 1)[-1] == "__main__":
            continue
        importlib.import_module(info.name)
        imported.append(info.name)

changed = []
for m in WATCHED:
    now = vars(m)
    for name in set(before[m.__name__]) | set(now):
        if before[m.__name__].get(name, KeyError) is not now.get(name, KeyError):
            changed.append(f"{m.__name__}.{name}")
for label, (cls, attributes) in classes.items():
    now = dict(vars(cls))
    for name in set(attributes) | set(now):
        if attributes.get(name, KeyError) is not now.get(name, KeyError):
            changed.append(f"{label}.{name}")

from task_def import progress
print(json.dumps({
    "imported": imported,
    "changed": sorted(changed),
    "own_resolver": all(m.resolve_serializer is rq.serializers.resolve_serializer
                        for m in (rq.job, rq.queue, rq.registry, rq.results)),
    "sink": repr(progress._sink),
    "threads": [t.name for t in threading.enumerate()],
}))
"""


def _probe() -> dict:
    done = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_every_module_leaves_rq_as_rq_made_it_and_starts_nothing() -> None:
    found = _probe()
    assert {
        "workqueue.worker.catalogue_worker",
        "workqueue.jobs",
        "workqueue.control",
        "workqueue.rq_compat",
        "workqueue.dashboard.app",
        "workqueue.gateway.app",
        "task_def.progress",
    } <= set(found["imported"])
    assert found["changed"] == []
    assert found["own_resolver"] is True
    assert found["sink"] == "None"
    assert found["threads"] == ["MainThread"]


def test_the_kill_scripts_module_does_not_load_the_worker() -> None:
    code = (
        "import sys, workqueue.control, workqueue.cli.kill; print('workqueue.worker.catalogue_worker' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
