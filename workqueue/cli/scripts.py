"""The console scripts `pip install` makes (see pyproject.toml): each runs one command of the CLI.

The imports are inside the functions so that each script loads only its own command's modules,
as the top-level entry points (producer_main.py, kill_thread/*.py, ...) do.
"""

from __future__ import annotations

from typing import NoReturn

from workqueue.cli.common import run


def workqueue() -> NoReturn:
    """`workqueue`: the same as `python -m workqueue`."""
    from workqueue.cli.admin import main

    run(main)


def producer() -> NoReturn:
    """`workqueue-producer`: the same as `python producer_main.py`."""
    from workqueue.cli.producer import main

    run(main)


def consumer() -> NoReturn:
    """`workqueue-consumer`: the same as `python consumer_main.py`."""
    from workqueue.cli.consumer import main

    run(main)


def dashboard() -> NoReturn:
    """`workqueue-dashboard`: the same as `python dashboard_main.py`."""
    from workqueue.cli.dashboard import main

    run(main)


def gateway() -> NoReturn:
    """`workqueue-gateway`: the same as `python gateway_main.py`."""
    from workqueue.cli.gateway import main

    run(main)


def kill_workers() -> NoReturn:
    """`workqueue-kill-workers`: the same as `python kill_thread/kill_workers.py`."""
    from workqueue.cli.kill import kill_workers

    run(kill_workers)


def kill_job() -> NoReturn:
    """`workqueue-kill-job`: the same as `python kill_thread/kill_job.py`."""
    from workqueue.cli.kill import kill_job

    run(kill_job)


def clean_workers() -> NoReturn:
    """`workqueue-clean-workers`: the same as `python kill_thread/clean_workers.py`."""
    from workqueue.cli.kill import clean_workers

    run(clean_workers)
