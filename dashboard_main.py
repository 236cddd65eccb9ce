"""Serve the dashboard: `python dashboard_main.py --help`."""

from workqueue.cli.common import run
from workqueue.cli.dashboard import main

if __name__ == "__main__":
    run(main)
